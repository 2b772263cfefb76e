"""Runs one tlsfuzzer script with its hard-coded TLS 1.2 CBC suites swapped for AES-128-GCM.

Usage: aead_shim.py SCRIPT [ARGS...]   (PYTHONPATH must name the tlsfuzzer checkout)

Several tlsfuzzer scripts about signatures and client certificates in TLS 1.2
(test-rsa-sigs-on-certificate-verify.py, test-sig-algs.py, ...) have no -C option and offer
only ECDHE_*_WITH_AES_128_CBC_SHA (plus DHE/RSA key exchange suites) when run with -d. certgate
(rustls) has AEAD suites only, so every handshake of those scripts would end in
handshake_failure and test nothing. The suites are not what those scripts test, so this shim
rebinds the CipherSuite constants the scripts name to the GCM suite with the same key exchange
and authentication before running the script unchanged. tlslite-ng derives the record
protection from the suite the server picks, so the rest of each conversation is unchanged.
Nothing else is patched; suites rustls lacks anyway (DHE_RSA, RSA key exchange) are left as
they are, and a script run through the shim still fails if the server picks none of the suites.
"""
import os
import runpy
import sys

from tlslite.constants import CipherSuite

SWAP = {
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
}
for cbc, gcm in SWAP.items():
    setattr(CipherSuite, cbc, getattr(CipherSuite, gcm))

script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
runpy.run_path(script, run_name="__main__")
