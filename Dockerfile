# arcdb image: `docker build -t arcdb .`, then `docker run -p 8000:8000 -v arc-data:/app/data arcdb`.
#
# Build stage: a release binary without debug info (the repository's release profile keeps line
# tables for profiling, which would make the binary hundreds of MB).
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
ENV CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=symbols
RUN cargo build --release --locked --bin arcdb \
    && mkdir -p /out \
    && cp target/release/arcdb /out/arcdb \
    && cp /etc/ssl/certs/ca-certificates.crt /out/ca-certificates.crt

# Runtime stage: Debian slim, the binary, CA roots for S3/Azure over TLS, a non-root user.
FROM debian:bookworm-slim
COPY --from=build /out/arcdb /usr/local/bin/arcdb
COPY --from=build /out/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home arc \
    && mkdir -p /app/data \
    && chown -R arc:arc /app
USER arc
WORKDIR /app
# Settings come from ARC_* variables (or a mounted /app/arc.toml). Files, WAL and metadata
# default to ./data/… under the working directory, /app/data.
ENV ARC_SERVER_HOST=0.0.0.0 \
    ARC_LOG_FORMAT=json
VOLUME ["/app/data"]
# 8000: HTTP API; 9000: cluster coordinator (set ARC_CLUSTER_COORDINATOR_ADDR=:9000).
EXPOSE 8000 9000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["arcdb", "healthcheck"]
ENTRYPOINT ["arcdb"]
