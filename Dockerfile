# Multi-stage build of every clerk-sync binary; the runtime image runs as a non-root user.
# Build:  docker build -t clerk-sync .
# Run:    docker run clerk-sync ingress   (or worker, migration)
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ingress -p worker -p api -p migration \
    && mkdir -p /out \
    && cp target/release/ingress target/release/worker target/release/api target/release/migration /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libssl3 ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home clerksync
COPY --from=build /out/ /usr/local/bin/
USER clerksync
ENV LOG_FORMAT=json
CMD ["worker"]
