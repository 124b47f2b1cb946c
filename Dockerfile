# syntax=docker/dockerfile:1

# Build stage: a static binary (glibc with crt-static), so the final image needs no libc.
FROM rust:1.95-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY . .
# The source revision for sfb_build_info; .git is not in the build context.
ARG SFB_REVISION=unknown
ENV SFB_REVISION=${SFB_REVISION}
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(rustc -vV | sed -n 's/^host: //p')" \
    && RUSTFLAGS="-C target-feature=+crt-static" \
       cargo build --release --locked --target "${target}" \
    && cp "target/${target}/release/sfb-exporter" /sfb-exporter

# Final stage: distroless static (CA certificates, /etc/passwd, no shell), as a non-root user.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /sfb-exporter /usr/local/bin/sfb-exporter
# 65532 is distroless's "nonroot"; numeric, so Kubernetes can verify runAsNonRoot.
USER 65532:65532
EXPOSE 9065
ENTRYPOINT ["/usr/local/bin/sfb-exporter"]
