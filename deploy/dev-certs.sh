#!/usr/bin/env bash
# Makes a development PKI for hvagent with the openssl command line (never for production):
#   ca.crt/key            the CA that signs the server and the clients
#   server.crt/key        the agent (SAN: localhost, 127.0.0.1, ::1 and this host's name)
#   <role>.crt/key        client certificates, CN = hvagent-<role>, for controller, operator,
#                         monitor, peer (another agent handing a domain over) and nobody (an
#                         identity with no role in the config)
#   expired.crt/key       a controller certificate that expired in 2020
#   rogue-ca.crt, rogue.crt/key  a client signed by another CA
#   tokens.txt            REST bearer tokens per role, and their SHA-256 for the config
# Usage: deploy/dev-certs.sh DIR   (DIR is created; existing files are kept)
#   HVAGENT_DEV_CERT_SANS="IP:10.0.0.2,DNS:hv2"  more names for the server certificate (tests whose
#   agents or QEMU migration channels listen on another address)
set -euo pipefail
dir=${1:?usage: dev-certs.sh DIR}
mkdir -p "$dir"
cd "$dir"
days=825

key() { [[ -f $1.key ]] || openssl genpkey -quiet -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key"; }

if [[ ! -f ca.crt ]]; then
  key ca
  openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=hvagent development CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.crt
fi

# sign NAME CN EXTFILE [CA]
sign() {
  local name=$1 cn=$2 ext=$3 ca=${4:-ca}
  [[ -f $name.crt ]] && return
  key "$name"
  openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$name.csr"
  openssl x509 -req -in "$name.csr" -CA "$ca.crt" -CAkey "$ca.key" -CAcreateserial -sha256 -days $days \
    -extfile "$ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr"
}

printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,DNS:%s,IP:127.0.0.1,IP:::1%s\n' \
  "$(hostname)" "${HVAGENT_DEV_CERT_SANS:+,$HVAGENT_DEV_CERT_SANS}" > server.ext
printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' > client.ext
sign server hvagent-server server.ext
for role in controller operator monitor peer nobody; do sign "$role" "hvagent-$role" client.ext; done

# A client from another CA.
if [[ ! -f rogue-ca.crt ]]; then
  key rogue-ca
  openssl req -x509 -new -key rogue-ca.key -sha256 -days 3650 -subj "/CN=some other CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" -out rogue-ca.crt
fi
sign rogue hvagent-controller client.ext rogue-ca

# An expired controller certificate: `openssl ca` takes explicit start and end dates.
if [[ ! -f expired.crt ]]; then
  key expired
  openssl req -new -key expired.key -subj "/CN=hvagent-controller" -out expired.csr
  mkdir -p expired-ca && : > expired-ca/index.txt && echo 01 > expired-ca/serial
  cat > expired-ca/ca.conf <<CONF
[ca]
default_ca = dev
[dev]
dir = expired-ca
database = \$dir/index.txt
serial = \$dir/serial
new_certs_dir = \$dir
default_md = sha256
policy = any
copy_extensions = none
x509_extensions = client
[any]
commonName = supplied
[client]
basicConstraints = CA:FALSE
extendedKeyUsage = clientAuth
CONF
  openssl ca -batch -config expired-ca/ca.conf -cert ca.crt -keyfile ca.key -in expired.csr -out expired.crt \
    -startdate 20190101000000Z -enddate 20200101000000Z 2>/dev/null
  rm -rf expired-ca expired.csr
fi

if [[ ! -f tokens.txt ]]; then
  for role in controller operator monitor; do
    token=$(openssl rand -hex 24)
    printf '%s %s %s\n' "$role" "$token" "$(printf %s "$token" | openssl dgst -sha256 -r | cut -d' ' -f1)"
  done > tokens.txt
fi
chmod 600 ./*.key tokens.txt
rm -f ./*.ext ./*.srl
echo "dev-certs: development PKI in $dir (CA ca.crt; server server.crt; clients controller/operator/monitor/nobody)"
