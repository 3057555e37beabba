#!/usr/bin/env bash
# Builds the image with Cloud Build, creates the output bucket, deploys the service and
# prints the URL to pass to renderMediaOnCloudrun({cloudRunUrl}).
#
#   PROJECT=my-project REGION=us-east1 ./deploy/deploy.sh
#
# Optional: SERVICE (cloudrun-render), BUCKET (<project>-renders), CPU (2), MEMORY (2Gi, see
# BENCHMARKS.md; 4Gi for 4K or concurrency above 1),
# MAX_INSTANCES (100), REPOSITORY (cloudrun-render, an Artifact Registry docker repo),
# SERVICE_ACCOUNT (the project's default compute service account).
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
REPOSITORY="${REPOSITORY:-cloudrun-render}"
project_number="$(gcloud projects describe "$PROJECT" --format='value(projectNumber)')"
export SERVICE_ACCOUNT="${SERVICE_ACCOUNT:-${project_number}-compute@developer.gserviceaccount.com}"
export IMAGE="${REGION}-docker.pkg.dev/${PROJECT}/${REPOSITORY}/${SERVICE}:$(git rev-parse --short HEAD)"

gcloud services enable run.googleapis.com cloudbuild.googleapis.com artifactregistry.googleapis.com \
  storage.googleapis.com --project "$PROJECT"
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

envsubst < deploy/service.yaml > "/tmp/${SERVICE}.yaml"
gcloud run services replace "/tmp/${SERVICE}.yaml" --region "$REGION" --project "$PROJECT"
url="$(gcloud run services describe "$SERVICE" --region "$REGION" --project "$PROJECT" --format='value(status.url)')"
echo
echo "cloudRunUrl: $url"
echo "outputBucket (forceBucketName): $BUCKET"
