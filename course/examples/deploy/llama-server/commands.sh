#!/bin/sh
# Two llama-server replicas and the gateway, without Docker: one replica per machine (or per
# GPU), the gateway anywhere that reaches them. Each command runs in its own terminal.
set -eu
MODEL=models/model.gguf
export UPSTREAM_KEY=change-me           # the replicas' key; clients never see it

# on machine A and on machine B
llama-server -m "$MODEL" --host 0.0.0.0 --port 8080 -c 16384 -np 4 --alias course-model --metrics --api-key "$UPSTREAM_KEY"

# on the gateway machine: keys in the environment, not on the command line
export REFERENCE_SERVER_UPSTREAMS="http://machine-a:8080#$UPSTREAM_KEY,http://machine-b:8080#$UPSTREAM_KEY"
reference-server --host 0.0.0.0 --port 8000 --keys-file course/examples/deploy/keys.toml --upstream-first-token-timeout 300

# check it: the model list is the union, x-upstream says which replica answered, /metrics counts
curl -s http://localhost:8000/v1/models -H "Authorization: Bearer $CLIENT_KEY"
curl -si http://localhost:8000/v1/chat/completions -H "Authorization: Bearer $CLIENT_KEY" \
  -H 'Content-Type: application/json' \
  -d '{"model": "course-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}'
curl -s http://localhost:8000/metrics | grep reference_server_upstream
