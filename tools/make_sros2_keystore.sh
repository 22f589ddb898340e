#!/usr/bin/env bash
# Build an SROS2 keystore for latent_rag_ros with openssl (the `ros2 security` CLI is not on PyPI).
#
#   tools/make_sros2_keystore.sh KEYSTORE [DOMAIN_ID]
#
# Layout (what rmw_fastrtps / rmw_cyclonedds look for under ROS_SECURITY_KEYSTORE):
#   KEYSTORE/public/ca.cert.pem, private/ca.key.pem          one CA signs identities and permissions
#   KEYSTORE/enclaves/governance.{xml,p7s}                    authenticated, encrypted, access-controlled
#   KEYSTORE/enclaves/latent_rag/<node>/{cert.pem,key.pem,identity_ca.cert.pem,permissions_ca.cert.pem,
#                                       governance.p7s,permissions.xml,permissions.p7s}
# One enclave per entry of sros2/policy.xml; the launch files pass `--enclave /latent_rag/<node>` and
# security:=true sets ROS_SECURITY_ENABLE/STRATEGY/KEYSTORE. Keep private/ off the robots: copy each
# robot only its own enclave folders. An existing CA is reused (re-run to add enclaves or renew).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KS="${1:?usage: $0 KEYSTORE [DOMAIN_ID]}"
DOMAIN="${2:-}"
POLICY="${LRR_SROS2_POLICY:-$ROOT/sros2/policy.xml}"
PY="${LRR_PYTHON:-python3}"
GEN="$ROOT/tools/sros2_permissions.py"
DAYS=3650
umask 077
mkdir -p "$KS/public" "$KS/private" "$KS/enclaves"

if [ ! -f "$KS/private/ca.key.pem" ]; then
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$KS/private/ca.key.pem" 2>/dev/null
  openssl req -new -x509 -sha256 -days "$DAYS" -key "$KS/private/ca.key.pem" -subj "/CN=latent_rag_sros2_CA" \
    -out "$KS/public/ca.cert.pem"
fi
for f in identity_ca permissions_ca; do
  ln -sf ca.cert.pem "$KS/public/$f.cert.pem"
  ln -sf ca.key.pem "$KS/private/$f.key.pem"
done
CA_CERT="$KS/public/ca.cert.pem"
CA_KEY="$KS/private/ca.key.pem"

sign() {  # sign IN.xml -> OUT.p7s with the CA (S/MIME, as the DDS-Security spec asks)
  openssl smime -sign -text -in "$1" -out "$2" -signer "$CA_CERT" -inkey "$CA_KEY"
}

"$PY" "$GEN" governance "$KS/enclaves/governance.xml" $DOMAIN
sign "$KS/enclaves/governance.xml" "$KS/enclaves/governance.p7s"

"$PY" "$GEN" enclaves "$POLICY" | while read -r enclave; do
  dir="$KS/enclaves${enclave}"
  mkdir -p "$dir"
  if [ ! -f "$dir/key.pem" ]; then
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/key.pem" 2>/dev/null
  fi
  # the subject is the enclave path; '/' inside a -subj value is escaped
  openssl req -new -sha256 -key "$dir/key.pem" -subj "/CN=${enclave//\//\\/}" -out "$dir/req.csr"
  openssl x509 -req -sha256 -days "$DAYS" -in "$dir/req.csr" -CA "$CA_CERT" -CAkey "$CA_KEY" \
    -set_serial "0x$(openssl rand -hex 16)" -out "$dir/cert.pem" 2>/dev/null
  rm -f "$dir/req.csr"
  cp "$CA_CERT" "$dir/identity_ca.cert.pem"
  cp "$CA_CERT" "$dir/permissions_ca.cert.pem"
  cp "$KS/enclaves/governance.p7s" "$dir/governance.p7s"
  "$PY" "$GEN" permissions "$POLICY" "$enclave" "$dir/permissions.xml" $DOMAIN
  sign "$dir/permissions.xml" "$dir/permissions.p7s"
  echo "[sros2] enclave $enclave"
done
echo "[sros2] keystore ready: $KS (export ROS_SECURITY_KEYSTORE=$KS ROS_SECURITY_ENABLE=true ROS_SECURITY_STRATEGY=Enforce)"
