"""A LitServe server of a torchvision ResNet checkpoint, with LitServe's own batching: the side-by-side
competitor of `resnet-classify serve` in benchmarks/serve_bench.py (not part of the product).

    python benchmarks/serve_litserve.py --arch resnet50 --weights CKPT.pth --port 8001 [--max-batch 16]
        [--batch-timeout 0.01]

POST /predict with a multipart/form-data body whose part "content" is the image (LitServe's own way of
taking a file upload) -> {"topk": [{"index", "label", "probability"}, ...]}. GET /health is 200 once the
model is set up.

What a LitServe user writes: the model and the preprocessing are torchvision's (`get_model`, the weights'
`transforms()`: resize 256 bilinear with antialias, centre crop 224, ImageNet mean/std), the checkpoint a
`state_dict` loaded with `weights_only=True`; decode_request decodes and transforms one image, batch stacks,
predict runs the network and the softmax, unbatch splits the batch back into rows. One inference worker
(the CPU is one device; more workers would only share the same cores), one API server process.
"""

from __future__ import annotations

import argparse
import io

import litserve as ls


class ResNetAPI(ls.LitAPI):
    def __init__(self, arch: str, weights: str, topk: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.arch_name, self.weights_path, self.topk = arch, weights, topk

    def setup(self, device):
        import torch
        import torchvision

        self.torch = torch
        meta = torchvision.models.get_model_weights(self.arch_name).DEFAULT
        self.model = torchvision.models.get_model(self.arch_name, weights=None)
        self.model.load_state_dict(torch.load(self.weights_path, map_location="cpu", weights_only=True))
        self.model.eval()
        self.transform = meta.transforms()
        self.labels = meta.meta["categories"]

    def decode_request(self, request):
        from PIL import Image

        data = request["content"].file.read()
        img = Image.open(io.BytesIO(data), formats=["JPEG", "PNG"]).convert("RGB")
        return self.transform(img)

    def batch(self, inputs):
        return self.torch.stack(inputs)

    def predict(self, x):
        with self.torch.inference_mode():
            probs = self.torch.softmax(self.model(x), dim=1)
            return probs.topk(self.topk, dim=1)

    def unbatch(self, output):
        values, indices = output
        return list(zip(values.tolist(), indices.tolist()))

    def encode_response(self, output):
        values, indices = output
        return {"topk": [{"index": i, "label": self.labels[i], "probability": v} for v, i in zip(values, indices)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--batch-timeout", type=float, default=0.01, help="seconds")
    ap.add_argument("--topk", type=int, default=5)
    args = ap.parse_args()
    api = ResNetAPI(args.arch, args.weights, args.topk, max_batch_size=args.max_batch,
                    batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=60)
    server.run(host=args.host, port=args.port, num_api_servers=1, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
