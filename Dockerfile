# Meridian container image.
#
#   docker build --build-arg MERIDIAN_BUILD_COMMIT=$(git rev-parse --short=12 HEAD) -t meridian .
#   docker run --rm -p 5353:5353/udp -p 5353:5353/tcp meridian
#   dig @127.0.0.1 -p 5353 api.example.net +subnet=198.51.100.0/24   # 127.0.0.12 (eu-west)
#
# The image holds the example config (/etc/meridian) and the sample GeoIP database, so it
# answers at once; mount your own config directory over /etc/meridian (in Kubernetes: a
# ConfigMap, see deploy/kubernetes/). DNS listens on 5353 (no capability needed: map port 53 to
# it), the admin port on 127.0.0.1:8053 unless your config says otherwise.
#
# Without access to a public registry, deploy/images/make-base-images.sh makes local stand-ins
# for both base images, and `buildah bud --isolation chroot --pull=never --format docker -t
# meridian .` builds (`--format docker`: buildah's default OCI format drops HEALTHCHECK).

ARG RUST_IMAGE=docker.io/library/rust:1-slim-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Dependencies first, built against stub sources: this layer is reused until Cargo.toml or
# Cargo.lock change, so a source change rebuilds only Meridian itself.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && for b in $(awk '/^\[\[bench\]\]/ {f = 1; next} f && /^name/ {gsub(/"/, "", $3); print $3; f = 0}' Cargo.toml); do \
      echo 'fn main() {}' > "benches/$b.rs"; done \
 && cargo build --release --locked --bin meridian \
 && rm -rf src benches
COPY build.rs build.rs
COPY src src
COPY benches benches
# The context has no .git: build.rs takes the commit for meridian_build_info from here
# (`--build-arg MERIDIAN_BUILD_COMMIT=$(git rev-parse --short=12 HEAD)`).
ARG MERIDIAN_BUILD_COMMIT=unknown
# touch: the stubs above are newer than the copied sources' modification times.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin meridian \
 && install -D -m 0755 target/release/meridian /out/usr/local/bin/meridian
# The example config, made to listen on every IPv4 address of the container and to keep its
# state under /var/lib/meridian (the only place the process writes). It is checked here, with
# the database linked to where the runtime image has it.
COPY zones /out/etc/meridian
COPY geodata/sample.mmdb /out/usr/share/meridian/sample.mmdb
RUN cd /out/etc/meridian \
 && sed -i \
      -e 's|^dns_listen .*|dns_listen       = ["0.0.0.0:5353"]|' \
      -e 's|^state_file .*|state_file       = "/var/lib/meridian/overrides.json"|' \
      -e 's|^geoip .*|geoip            = "/usr/share/meridian/sample.mmdb"|' \
      meridian.toml \
 && grep -q '^dns_listen .*0.0.0.0:5353' meridian.toml \
 && grep -q '^state_file .*/var/lib/meridian/' meridian.toml \
 && grep -q '^geoip .*/usr/share/meridian/' meridian.toml \
 && mkdir -p /out/var/lib/meridian \
 && mkdir -p /usr/share/meridian \
 && ln -s /out/usr/share/meridian/sample.mmdb /usr/share/meridian/sample.mmdb \
 && /out/usr/local/bin/meridian check --config meridian.toml

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="meridian" \
      org.opencontainers.image.description="Global traffic manager: an authoritative DNS server that answers with the nearest healthy regional endpoint" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="docs/operations.md in the source repository"
# Root certificates for https health checks (tls_verify), from the build stage's Debian.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/usr /usr
COPY --from=build /out/etc/meridian /etc/meridian
COPY --from=build --chown=65532:65532 /out/var/lib/meridian /var/lib/meridian
# A numeric user, so that Kubernetes' runAsNonRoot can check it without a passwd entry.
USER 65532:65532
ENV MERIDIAN_CONFIG=/etc/meridian/meridian.toml
EXPOSE 5353/udp 5353/tcp
# /ready: 200 once the first round of health probes is done. bash's /dev/tcp needs no client.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8053 && printf 'GET /ready HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/meridian"]
CMD ["serve"]
