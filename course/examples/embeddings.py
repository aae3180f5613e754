"""Chapter 6: embeddings and cosine similarity."""

import os

import numpy as np
from openai import OpenAI

client = OpenAI(base_url=os.environ.get("BASE_URL", "http://127.0.0.1:8000/v1"), api_key="not-needed")

sentences = ["The cat sat on the mat.", "A kitten rested on the rug.", "The stock market fell sharply today."]
result = client.embeddings.create(model="SmolLM2-135M-Instruct", input=sentences)
vectors = np.array([item.embedding for item in result.data])  # one row per input, in input order
print(f"{vectors.shape[0]} vectors of {vectors.shape[1]} dimensions, norms {np.linalg.norm(vectors, axis=1).round(3)}")

similarity = vectors @ vectors.T  # the vectors are unit length, so the dot product is the cosine
for i in range(1, len(sentences)):
    print(f"{similarity[0, i]:.3f}  {sentences[0]!r} vs {sentences[i]!r}")
