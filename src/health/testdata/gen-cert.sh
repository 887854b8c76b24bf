#!/bin/sh
# Regenerates the self-signed test certificate used by the https probe tests in probe.rs:
# a P-256 key and a certificate for api.example.net (SAN), valid for 100 years, both as DER.
set -eu
cd "$(dirname "$0")"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout key.pem -out cert.pem -days 36500 -subj "/CN=api.example.net" \
  -addext "subjectAltName=DNS:api.example.net" -addext "basicConstraints=critical,CA:FALSE" 2>/dev/null
openssl x509 -in cert.pem -outform DER -out cert.der
openssl pkcs8 -topk8 -nocrypt -in key.pem -outform DER -out key.der
rm key.pem cert.pem
