"""Reads certgate's identity headers back with independent tools, for tests/it/identity.rs.

    identity_check.py HEAD_FILE LEAF_PEM [INTERMEDIATE_PEM ...]

HEAD_FILE holds the request head the app received. The DER of each certificate comes from
`openssl x509 -outform DER`; RFC 9440 `Client-Cert` and `Client-Cert-Chain` are parsed with
the `http_sfv` library (RFC 8941 structured fields), `X-ARR-ClientCert` is decoded the way
ASP.NET Core does it (strict base64 of the DER), and the RFC 2253 subject is what
`openssl x509 -noout -subject -nameopt RFC2253` prints. Prints one JSON object.
"""
import base64
import binascii
import json
import subprocess
import sys

import http_sfv


def der(pem_path):
    return subprocess.run(["openssl", "x509", "-outform", "DER", "-in", pem_path],
                          check=True, capture_output=True).stdout


def main():
    head_path, leaf_pem, *intermediates = sys.argv[1:]
    lines = open(head_path, "rb").read().decode("latin-1").split("\r\n")[1:]
    fields = {}
    for line in lines:
        if ":" in line:
            name, value = line.split(":", 1)
            fields.setdefault(name.strip().lower(), []).append(value.strip())
    leaf = der(leaf_pem)
    chain = [der(p) for p in intermediates]
    out = {"counts": {k: len(v) for k, v in fields.items()}}

    if "client-cert" in fields:
        item = http_sfv.Item()
        item.parse(fields["client-cert"][0].encode())
        out["client_cert"] = item.value == leaf
    if "client-cert-chain" in fields:
        lst = http_sfv.List()
        lst.parse(", ".join(fields["client-cert-chain"]).encode())
        out["client_cert_chain"] = [m.value for m in lst] == chain
    if "x-arr-clientcert" in fields:
        try:
            out["arr"] = base64.b64decode(fields["x-arr-clientcert"][0], validate=True) == leaf
        except binascii.Error:
            out["arr"] = False
    subject = subprocess.run(["openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253",
                              "-in", leaf_pem], check=True, capture_output=True, text=True)
    out["openssl_subject"] = subject.stdout.strip().removeprefix("subject=")
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
