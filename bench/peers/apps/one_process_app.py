"""The one-process approach: every model held by one Python process behind a plain aiohttp server.

What people write instead of a model server: ``POST /models`` (``{"model_name", "url"}``) loads
``url/model.pt`` with ``torch.jit.load`` into a dict, ``POST /models/<name>/invoke`` runs
JSON -> forward -> JSON in the request handler, ``GET /ping`` answers 200. Same JSON contract as
``torch-mme serve``. Run by the peers' venv:
``python one_process_app.py --port P [--threads N]``; binds 127.0.0.1.
"""

import argparse
import json
import os

import torch
from aiohttp import web

JSON = "application/json"
models = {}


async def ping(request):
    return web.json_response({"status": "Healthy"})


async def load(request):
    spec = await request.json()
    name, url = spec["model_name"], spec["url"]
    if name in models:
        return web.json_response({"code": 409, "message": f"model {name} is already loaded"}, status=409)
    models[name] = torch.jit.load(os.path.join(url, "model.pt"), map_location="cpu").eval()
    return web.json_response({"status": f"model {name} loaded"})


async def unload(request):
    if models.pop(request.match_info["name"], None) is None:
        return web.json_response({"code": 404, "message": "model not loaded"}, status=404)
    return web.json_response({"status": "unloaded"})


async def list_models(request):
    return web.json_response({"models": [{"modelName": name} for name in models]})


async def invoke(request):
    model = models.get(request.match_info["name"])
    if model is None:
        return web.json_response({"code": 404, "message": "model not loaded"}, status=404)
    rows = json.loads(await request.read())
    with torch.inference_mode():
        prediction = model(torch.tensor(rows, dtype=torch.float32))
    return web.Response(body=json.dumps(prediction.tolist()).encode(), content_type=JSON)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the workers' count: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    app = web.Application(client_max_size=64 * 2**20)
    app.add_routes(
        [
            web.get("/ping", ping),
            web.post("/models", load),
            web.get("/models", list_models),
            web.delete("/models/{name}", unload),
            web.post("/models/{name}/invoke", invoke),
        ]
    )
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
