#!/bin/sh
# Two vLLM replicas and the gateway, without Docker. Each command runs in its own terminal.
set -eu
export UPSTREAM_KEY=change-me

# on GPU machine A (and likewise on B); vllm serve is vLLM's OpenAI-compatible server
vllm serve Qwen/Qwen2.5-7B-Instruct --served-model-name course-model --port 8000 \
  --max-model-len 16384 --enable-prefix-caching --api-key "$UPSTREAM_KEY"

# on the gateway machine
export REFERENCE_SERVER_UPSTREAMS="http://gpu-a:8000#$UPSTREAM_KEY,http://gpu-b:8000#$UPSTREAM_KEY"
reference-server --host 0.0.0.0 --port 8000 --keys-file course/examples/deploy/keys.toml \
  --upstream-health-interval 5 --upstream-first-token-timeout 120
