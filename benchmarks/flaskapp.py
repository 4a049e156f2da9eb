"""Flask app for the benchmarks: one `jsonify` view, as a typical JSON API endpoint."""

from __future__ import annotations

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/")
def index():
    return jsonify(message="Hello, world!", items=[1, 2, 3], ok=True)
