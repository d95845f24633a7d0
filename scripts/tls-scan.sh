#!/usr/bin/env bash
# Scan a corelb TLS listener with testssl.sh (a TLS scanner nobody here wrote):
# protocols, cipher suites, forward secrecy, server defaults and known
# vulnerabilities. Starts a built-in origin and corelb on loopback with a
# certificate made for the run (ECDSA P-256, signed by a CA made for the run),
# scans 127.0.0.1, prints testssl's findings and exits 1 if it reports any
# finding of severity MEDIUM or worse (or a protocol or cipher it calls weak).
#
# Usage: scripts/tls-scan.sh [PORT]        (needs testssl.sh and openssl:
#                                           apt-get install -y testssl.sh openssl)
set -euo pipefail
cd "$(dirname "$0")/.."
port=${1:-18443}
command -v testssl >/dev/null || { echo "tls-scan.sh: apt-get install -y testssl.sh" >&2; exit 2; }
command -v openssl >/dev/null || { echo "tls-scan.sh: apt-get install -y openssl" >&2; exit 2; }
cargo build --release --quiet
bin=target/release/corelb
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# A CA and a leaf for localhost and 127.0.0.1 (a leaf, not a self-signed CA
# certificate: that is what a deployment serves).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=corelb scan CA" -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=localhost" -keyout "$work/site.key" -out "$work/site.csr" 2>/dev/null
printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n" > "$work/ext.cnf"
openssl x509 -req -in "$work/site.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
  -CAcreateserial -days 2 -extfile "$work/ext.cnf" -out "$work/site.pem" 2>/dev/null

origin=$((port + 1))
"$bin" backend --listen "127.0.0.1:$origin" 2>/dev/null & pids+=($!)
"$bin" serve --listen "127.0.0.1:$port,tls" --tls-cert "$work/site.pem" --tls-key "$work/site.key" \
  --backend "127.0.0.1:$origin" --workers 1 2>"$work/corelb.err" & pids+=($!)
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.05
done

# --warnings batch: no questions; --color 0 for a log; --severity LOW lists
# findings from LOW up in the summary; the JSON is what is checked.
testssl --warnings batch --color 0 --quiet --add-ca "$work/ca.pem" \
  --jsonfile "$work/scan.json" "127.0.0.1:$port" | tee "$work/scan.txt" || true

# Findings about the certificate itself (made for this run: 2 days, no CRL or
# OCSP URI) and about HTTP headers the backend chooses (HSTS) are not the
# listener's: listed, not counted.
python3 - "$work/scan.json" <<'PY'
import json, sys
findings = json.load(open(sys.argv[1]))
def not_ours(f):
    return f["id"].startswith("cert_") or f["id"] in ("security_headers", "HSTS")
serious = [f for f in findings if f.get("severity") in ("LOW", "MEDIUM", "HIGH", "CRITICAL")]
print("\ntestssl findings by severity:",
      {s: sum(1 for f in findings if f.get("severity") == s)
       for s in ("OK", "INFO", "LOW", "MEDIUM", "HIGH", "CRITICAL", "WARN")})
for f in serious:
    print("  %s %s: %s%s" % (f["severity"], f["id"], f["finding"],
                             " (the test certificate or the backend's headers: not counted)" if not_ours(f) else ""))
bad = [f for f in serious if not not_ours(f) and f["severity"] != "LOW"]
sys.exit(1 if bad else 0)
PY
