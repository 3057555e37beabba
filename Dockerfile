# syntax=docker/dockerfile:1
# Two stages: build with the Rust toolchain and libav headers, run on bookworm-slim with
# chromium-headless-shell and the libav runtime. Both read deploy/packages.txt.

FROM rust:1.95-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY deploy/packages.txt deploy/packages.txt
RUN apt-get update \
    && awk '$1 == "build" { print $2 }' deploy/packages.txt \
       | xargs apt-get install -y --no-install-recommends \
    && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock ./
COPY src src
RUN cargo build --release --locked --bin cloudrun-render

FROM debian:bookworm-slim
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY deploy/packages.txt /tmp/packages.txt
RUN apt-get update \
    && awk '$1 == "runtime" { print $2 }' /tmp/packages.txt \
       | xargs apt-get install -y --no-install-recommends \
    && rm -rf /var/lib/apt/lists/* /tmp/packages.txt \
    && useradd --system --create-home --uid 10001 render
COPY --from=build /src/target/release/cloudrun-render /usr/local/bin/cloudrun-render
USER 10001
ENV PORT=8080 \
    CLOUDRUN_RENDER_BROWSER=/usr/lib/chromium/chromium-headless-shell
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/cloudrun-render"]
CMD ["serve"]
