# syntax=docker/dockerfile:1
# The anika binary in a small runtime image. compose.yaml runs it once per role
# (`serve catalog|ingest|dispatcher`); without arguments it runs `up`, all roles
# in one process. Configuration comes from ANIKA_* variables (see DESIGN.md) or
# a file named by ANIKA_CONFIG.
#
#   docker build -t anika .

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# sqlx's compile-time checked queries (if any) use the committed .sqlx data,
# never a live database.
ENV SQLX_OFFLINE=true
# The cache mounts keep downloaded crates and build artefacts between builds;
# the binary is copied out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin anika \
    && install -m 0755 target/release/anika /usr/local/bin/anika

FROM debian:bookworm-slim
# ca-certificates: webhook targets and managed databases are reached over TLS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 anika \
    && useradd --system --uid 10001 --gid anika --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin anika
COPY --from=build /usr/local/bin/anika /usr/local/bin/anika
# Numeric, so that orchestrators can verify the image does not run as root.
USER 10001:10001
# Inside a container the API must listen on all interfaces (the default is 127.0.0.1:8080).
ENV ANIKA_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/anika"]
CMD ["up"]
