#!/usr/bin/env bash
# Builds the image with Cloud Build, creates the output bucket, deploys the service and
# prints the URL to pass to renderMediaOnCloudrun({cloudRunUrl}).
#
#   PROJECT=my-project REGION=us-east1 ./deploy/deploy.sh
#
# Optional: SERVICE (cloudrun-render), BUCKET (<project>-renders), CPU (2), MEMORY (2Gi, see
# BENCHMARKS.md; 4Gi for 4K or concurrency above 1),
# MAX_INSTANCES (100), MAX_CHUNKS (MAX_INSTANCES - 1: the coordinator holds one instance),
# REPOSITORY (cloudrun-render, an Artifact Registry docker repo), SERVICE_ACCOUNT (the
# project's default compute service account), CHUNK_SECRET (<service>-chunk-secret, the Secret
# Manager secret chunk calls are signed with; created with a random value if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

: "${PROJECT:?set PROJECT to your Google Cloud project id}"
: "${REGION:?set REGION, e.g. us-east1}"
export PROJECT REGION
export SERVICE="${SERVICE:-cloudrun-render}"
export BUCKET="${BUCKET:-${PROJECT}-renders}"
export CPU="${CPU:-2}"
export MEMORY="${MEMORY:-2Gi}"
export MAX_INSTANCES="${MAX_INSTANCES:-100}"
export MAX_CHUNKS="${MAX_CHUNKS:-$((MAX_INSTANCES > 1 ? MAX_INSTANCES - 1 : 1))}"
export CHUNK_SECRET="${CHUNK_SECRET:-${SERVICE}-chunk-secret}"
REPOSITORY="${REPOSITORY:-cloudrun-render}"
project_number="$(gcloud projects describe "$PROJECT" --format='value(projectNumber)')"
export SERVICE_ACCOUNT="${SERVICE_ACCOUNT:-${project_number}-compute@developer.gserviceaccount.com}"
export IMAGE="${REGION}-docker.pkg.dev/${PROJECT}/${REPOSITORY}/${SERVICE}:$(git rev-parse --short HEAD)"
# The service's deterministic URL, known before the first deploy: the fan-out URL.
export SERVICE_URL="https://${SERVICE}-${project_number}.${REGION}.run.app"

gcloud services enable run.googleapis.com cloudbuild.googleapis.com artifactregistry.googleapis.com \
  storage.googleapis.com secretmanager.googleapis.com --project "$PROJECT"
gcloud artifacts repositories describe "$REPOSITORY" --location "$REGION" --project "$PROJECT" >/dev/null 2>&1 \
  || gcloud artifacts repositories create "$REPOSITORY" --repository-format docker \
       --location "$REGION" --project "$PROJECT"
gcloud builds submit --tag "$IMAGE" --project "$PROJECT" .

# Fine-grained ACLs, so "public" and "private" renders get their own object ACLs, as the
# Remotion client expects. (Buckets with uniform access need privacy "no-acl".)
gcloud storage buckets describe "gs://$BUCKET" --project "$PROJECT" >/dev/null 2>&1 \
  || gcloud storage buckets create "gs://$BUCKET" --location "$REGION" --project "$PROJECT" \
       --no-uniform-bucket-level-access
gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" --project "$PROJECT" \
  --member "serviceAccount:$SERVICE_ACCOUNT" --role roles/storage.objectAdmin >/dev/null

# Chunk objects (renders/<id>/chunks/*.chunk) are deleted after the join; this rule removes
# what a crashed coordinator left, after a day. It replaces the bucket's lifecycle rules.
gcloud storage buckets update "gs://$BUCKET" --project "$PROJECT" \
  --lifecycle-file deploy/lifecycle.json >/dev/null

# The chunk secret lives in Secret Manager (not a plain env value, which anyone who can view
# the service could read); only the service account may access it.
gcloud secrets describe "$CHUNK_SECRET" --project "$PROJECT" >/dev/null 2>&1 \
  || openssl rand -hex 32 | tr -d '\n' \
     | gcloud secrets create "$CHUNK_SECRET" --project "$PROJECT" --data-file=- >/dev/null
gcloud secrets add-iam-policy-binding "$CHUNK_SECRET" --project "$PROJECT" \
  --member "serviceAccount:$SERVICE_ACCOUNT" --role roles/secretmanager.secretAccessor >/dev/null
CHUNK_SECRET_VERSION="$(gcloud secrets versions list "$CHUNK_SECRET" --project "$PROJECT" \
  --filter state=enabled --sort-by ~createTime --limit 1 --format 'value(name)')"
export CHUNK_SECRET_VERSION="${CHUNK_SECRET_VERSION##*/}"

envsubst < deploy/service.yaml > "/tmp/${SERVICE}.yaml"
gcloud run services replace "/tmp/${SERVICE}.yaml" --region "$REGION" --project "$PROJECT"
# The service calls itself: its service account must be allowed to invoke it (the service
# stays private; clients need run.invoker too, as renderMediaOnCloudrun() expects).
gcloud run services add-iam-policy-binding "$SERVICE" --region "$REGION" --project "$PROJECT" \
  --member "serviceAccount:$SERVICE_ACCOUNT" --role roles/run.invoker >/dev/null
url="$(gcloud run services describe "$SERVICE" --region "$REGION" --project "$PROJECT" --format='value(status.url)')"
echo
echo "cloudRunUrl: $url"
echo "outputBucket (forceBucketName): $BUCKET"
