"""FastAPI app for the benchmarks: one JSON endpoint returning what `flaskapp:app`'s jsonify
view returns, as a typical async JSON API endpoint (a dict, serialized by FastAPI's default
JSONResponse)."""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI()


# No return annotation on purpose: FastAPI would take it as the response_model and validate
# the dict with pydantic on every request, which jsonify (the Flask scenario's view) does not.
@app.get("/")
async def index():
    return {"message": "Hello, world!", "items": [1, 2, 3], "ok": True}
