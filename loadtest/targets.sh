# shellcheck shell=bash
# The terminators of the load tests: configurations, start, stop and the check each gets before
# it is measured. Sourced by run.sh (and through it by ab.sh, h2.sh and passthrough.sh); uses
# run.sh's globals (WORK, PORT, TERM_CPU, UPSTREAM_PORT, NOFILE, ...) and envoy.sh.
#
# $1 = on|off: TLS session resumption (tickets and session cache);
# certgate_conf's $2 = certgate's port (default: PORT[certgate]).
certgate_conf() {
  cat <<EOF
[server]
workers = 1
pin_workers = false   # taskset pins the whole process to core $TERM_CPU

[[listener]]
name = "loadtest"
bind = "127.0.0.1:${2:-${PORT[certgate]}}"
cert = "$WORK/certs/server.pem"
key = "$WORK/certs/server.key"
client_certificate_mode = "accept"
upstream = "127.0.0.1:$UPSTREAM_PORT"
session_resumption = $([[ $1 == on ]] && echo true || echo false)
EOF
}

# The operations features of ka-mtls-ops, appended to certgate_conf: one JSON access line per
# request on stdout (start_certgate sends it to a file) and the admin listener on port $1,
# whose /metrics scrape_loop fetches every second.
certgate_ops_conf() {
  certgate_admin_conf "$1"
  cat <<EOF

[log]
access = "json"
EOF
}

# The admin listener on port $1, appended to certgate_conf: run.sh's certgate always has one,
# so its own handshake counters (/metrics) say how many handshakes resumed. The counters are
# kept whether or not it is there; scraping happens outside the measured window.
certgate_admin_conf() {
  cat <<EOF

[admin]
bind = "127.0.0.1:$1"
EOF
}

# scrape_loop PORT OUT: GET /metrics every second, on the generator core, until killed. One
# line per scrape in OUT (the HTTP status, or "fail"); the last body in OUT.body.
scrape_loop() {
  local port=$1 out=$2
  : >"$out"
  while :; do
    taskset -c "$GEN_CPU" curl -s --max-time 2 -o "$out.body" -w '%{http_code}\n' \
      "http://127.0.0.1:$port/metrics" >>"$out" 2>/dev/null || echo fail >>"$out"
    sleep 1
  done
}

# ops_run TARGET SCENARIO ADMIN_PORT CMD...: CMD (a bench/oha_run call) with scrape_loop beside
# it, then ops_check.py compares the access-log lines and certgate_requests_total with the
# requests the load generator completed and appends its findings to the results.
ops_run() {
  local t=$1 s=$2 aport=$3 lines0 sp scr=$WORK/logs/scrapes-$1.txt; shift 3
  sleep 1.5  # certgate flushes its access-log buffer every second: count earlier requests before
  lines0=$(wc -l <"$WORK/logs/$t.access")
  scrape_loop "$aport" "$scr" &
  sp=$!
  STARTED+=("$sp")
  "$@"
  kill "$sp" 2>/dev/null || true
  wait "$sp" 2>/dev/null || true
  sleep 1.5  # certgate flushes its access-log buffer every second
  python3 "$HERE/ops_check.py" --results "$RESULTS_JSONL" --access "$WORK/logs/$t.access" \
    --from-line "$lines0" --scrapes "$scr" --metrics "http://127.0.0.1:$aport/metrics" \
    ${BENCH_TAGS:+--tags $BENCH_TAGS} \
    || warn "$t $s: access-log lines, scrapes or certgate_requests_total do not match the requests"
}

# nginx_conf MODE [plain]: the nginx target (TLS), or with `plain` the nginx-plain target: the
# same configuration without TLS (listen without ssl, no ssl_* directives), its own directory.
nginx_conf() {
  local flavour=${2:-tls} d=$WORK/nginx tickets=off cache=off listen tls=""
  [[ $flavour == plain ]] && d=$WORK/nginx-plain
  [[ $1 == on ]] && { tickets=on; cache="shared:SSL:10m"; }
  if [[ $flavour == plain ]]; then
    listen="listen 127.0.0.1:${PORT[nginx-plain]};"
  else
    listen="listen 127.0.0.1:${PORT[nginx]} ssl;"
    tls="
    ssl_certificate $WORK/certs/server.pem;
    ssl_certificate_key $WORK/certs/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_verify_client optional_no_ca;
    ssl_session_tickets $tickets;
    ssl_session_cache $cache;"
  fi
  # Bodies of real sizes: responses buffered in memory (never a temp file), uploads streamed
  # to the upstream as they arrive, no size limit. Only on the paths that carry them, so the
  # 2-byte requests keep nginx's defaults.
  local big="proxy_buffers 16 64k; proxy_buffer_size 64k; proxy_max_temp_file_size 0;
      proxy_request_buffering off; client_max_body_size 0;"
  cat <<EOF
worker_processes 1;
worker_rlimit_nofile $NOFILE;
pid $d/nginx.pid;
error_log $d/logs/error.log warn;
events { worker_connections $(( NOFILE - 100 )); }
http {
  client_body_temp_path $d/tmp;
  proxy_temp_path $d/tmp;
  # Defaults would close a keep-alive client after 1000 requests and add handshakes that the
  # other two never do.
  keepalive_requests 100000000;
  keepalive_timeout 60s;
  log_format reuse "\$ssl_session_reused";
  # One line per *new* connection ("r" = resumed, "." = full handshake), so the report can say
  # how many of oha's connections really resumed in new-resume. Keep-alive requests log nothing.
  map \$connection_requests \$first_request { 1 1; default 0; }
  access_log $d/logs/handshakes.log reuse buffer=64k flush=1s if=\$first_request;
  upstream app {
    server 127.0.0.1:$UPSTREAM_PORT;
    keepalive 64;
    keepalive_requests 100000000;
  }
  server {
    $listen$tls
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host \$host;
    proxy_set_header X-Forwarded-Client-Cert \$ssl_client_escaped_cert;
    location / { proxy_pass http://app; }
    location /d/ { $big
      proxy_pass http://app; }
    location /c/ { $big
      proxy_pass http://app; }
    location = /u { $big
      proxy_pass http://app; }
    # Only used to find out whether a load generator resumes sessions (see oha_resumes).
    location /probe { access_log $d/logs/reuse.log reuse; proxy_pass http://app; }
  }
}
EOF
}

# HAProxy 2.6 refuses "verify optional" without a ca-file. It gets an unrelated CA plus
# ca-ignore-err/crt-ignore-err all, so that, like nginx's optional_no_ca and certgate's accept
# mode without client_ca, any client certificate is accepted and no chain signature is checked.
haproxy_conf() {
  local notickets="" cache=""
  [[ $1 == off ]] && { notickets=" no-tls-tickets"; cache="  tune.ssl.cachesize 0"; }
  cat <<EOF
global
  nbthread 1
  maxconn $(( (NOFILE - 100) / 2 ))   # each proxied connection uses two descriptors
  # ssl_sess and ssl_reused_sess of the frontend (resumed.py): its own handshake counters.
  stats socket $WORK/haproxy.sock mode 600 level user
$cache
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
frontend fe
  bind 127.0.0.1:${PORT[haproxy]} ssl crt $WORK/certs/server-combined.pem verify optional ca-file $WORK/certs/other-ca.pem ca-ignore-err all crt-ignore-err all ssl-min-ver TLSv1.2$notickets
  http-request del-header X-Forwarded-Client-Cert
  http-request set-header X-Forwarded-Client-Cert %[ssl_c_der,base64] if { ssl_c_used }
  default_backend app
backend app
  http-reuse always
  server up 127.0.0.1:$UPSTREAM_PORT
EOF
}

# Envoy with one HTTP/1.1 listener (ALPN http/1.1 only: curl would pick h2 otherwise), the
# upstream nginx as its cluster (connections pooled, kept alive) and the admin listener for
# its handshake counters.
envoy_http1_conf() {
  envoy_admin "$ENVOY_ADMIN_PORT"
  echo "static_resources:"
  echo "  listeners:"
  envoy_listener tls "${PORT[envoy]}" app '"http/1.1"' "$1"
  echo "  clusters:"
  envoy_cluster app "$UPSTREAM_PORT" h1
}

# start_terminators MODE [cold]: every TLS target, with resumption MODE (on|off); nginx-plain
# too when MODE is on (it has no TLS; it serves only the keep-alive scenarios, which run with it
# on). Then a short warm-up of each, unless `cold` (idle memory wants untouched processes).
start_terminators() {
  local mode=$1 t
  log "starting terminators on core $TERM_CPU (session resumption $mode)"
  mkdir -p "$WORK/nginx/logs" "$WORK/nginx/tmp" "$WORK/nginx-plain/logs" "$WORK/nginx-plain/tmp"
  { certgate_conf "$mode"; certgate_admin_conf "$CG_ADMIN_PORT"; } >"$WORK/certgate-$mode.toml"
  nginx_conf "$mode" >"$WORK/nginx-$mode.conf"
  haproxy_conf "$mode" >"$WORK/haproxy-$mode.cfg"
  start_certgate certgate "$CERTGATE_BIN" "$WORK/certgate-$mode.toml"
  start nginx "$TERM_CPU" nginx -p "$WORK/nginx" -c "$WORK/nginx-$mode.conf" -e "$WORK/nginx/logs/error.log" -g 'daemon off;'
  start haproxy "$TERM_CPU" haproxy -db -f "$WORK/haproxy-$mode.cfg"
  if [[ -n $ENVOY ]]; then
    envoy_http1_conf "$mode" >"$WORK/envoy-$mode.yaml"
    start_envoy envoy "$WORK/envoy-$mode.yaml"
  fi
  local up=("${TARGETS[@]}")
  if [[ $mode == on ]]; then
    nginx_conf on plain >"$WORK/nginx-plain.conf"
    start "$PLAIN" "$TERM_CPU" nginx -p "$WORK/nginx-plain" -c "$WORK/nginx-plain.conf" \
      -e "$WORK/nginx-plain/logs/error.log" -g 'daemon off;'
    up+=("$PLAIN")
  fi
  for t in "${up[@]}"; do wait_port "${PORT[$t]}" "$t"; done
  for t in "${up[@]}"; do verify "$t" "$mode"; done
  # Warm-up, not recorded: upstream connections opened, caches and allocators settled.
  [[ ${2:-} == cold ]] && return 0
  for t in "${up[@]}"; do
    taskset -c "$GEN_CPU" wrk -t1 -c32 -d1s "$(base_url "$t")/" >/dev/null
  done
}

stop_terminators() {
  for t in "${TARGETS[@]}" "$PLAIN" certgate-ops; do stop "$t"; done
}

base_url() {  # base_url TARGET: scheme, address and port, no path
  if [[ $1 == "$PLAIN" ]]; then echo "http://127.0.0.1:${PORT[$1]}"; else echo "https://127.0.0.1:${PORT[$1]}"; fi
}

# One real request through each target: with a client certificate the upstream must receive
# the certificate header; without one it must not; resumption must be as configured.
# nginx-plain: one plain request, no header.
verify() {
  local t=$1 mode=$2 url c=$WORK/certs out hdr r want
  url="$(base_url "$t")/xfcc"
  if [[ $t == "$PLAIN" ]]; then
    out=$(curl -sS --max-time 5 -w '\n%{http_code}' "$url") || die "$t: plain request failed"
    [[ $(head -1 <<<"$out") == "xfcc=" && $(tail -1 <<<"$out") == 200 ]] \
      || die "$t: expected 200 and no certificate header, got: $out"
    printf '  %-12s ok: plain HTTP, no certificate header\n' "$t"
    return 0
  fi
  out=$(curl -sS -k --http1.1 --max-time 5 --cert "$c/client.pem" --key "$c/client.key" -w '\n%{http_code}' "$url") \
    || die "$t: request with client certificate failed"
  [[ $(tail -1 <<<"$out") == 200 ]] || die "$t: expected 200, got: $out"
  hdr=$(head -1 <<<"$out"); hdr=${hdr#xfcc=}
  ((${#hdr} > 200)) || die "$t: upstream did not receive X-Forwarded-Client-Cert (got '${hdr:0:80}')"
  echo "$hdr" >"$WORK/xfcc-$t.txt"
  out=$(curl -sS -k --http1.1 --max-time 5 "$url" | head -1)
  [[ $out == "xfcc=" ]] || die "$t: without a client certificate the upstream still got: ${out:0:80}"
  r=$(python3 "$HERE/probe_resume.py" "${PORT[$t]}" "$c/client.pem" "$c/client.key")
  want=full; [[ $mode == on ]] && want=reused
  [[ $r == "$want" ]] || warn "$t: resumption is '$r' but '$want' was configured"
  # The version and AEAD an OpenSSL client (curl, wrk) gets: the cipher decides much of the
  # bulk figures, so the report says which one each target chose.
  local tls
  tls=$(openssl s_client -connect "127.0.0.1:${PORT[$t]}" -brief </dev/null 2>&1 \
    | sed -n 's/^Protocol version: //p; s/^Ciphersuite: //p' | paste -sd' ')
  echo "$tls" >"$WORK/tls-$t.txt"
  printf '  %-12s ok: XFCC forwarded (%d chars), handshake %s, %s\n' "$t" "${#hdr}" "$r" "${tls:-?}"
}
