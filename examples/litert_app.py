"""A LiteRT app: greedy text generation from a `.tflite` file alone.

Needs only `numpy` and `ai-edge-litert` (no TensorFlow, Keras or this package): it is
what runs on the device. The `.tflite` file holds the two signatures written by
`keras_attention.export.export_generator` (`prefill` and `decode`, the key/value cache
as explicit state); the token loop is this file's own code.

    python examples/litert_app.py saved_models/char_language_model.tflite \\
        saved_models/char_language_model.vocab.json "The with statement"
"""

import argparse
import json

import numpy as np


class LiteRTGenerator:
    """The `prefill` and `decode` signatures of one `.tflite` file, and a greedy loop."""

    def __init__(self, path, num_threads=None):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=path, num_threads=num_threads)
        self.prefill = self.interpreter.get_signature_runner("prefill")
        self.decode = self.interpreter.get_signature_runner("decode")
        # The cache's second axis is the number of positions (prompt + new tokens).
        cache = self.decode.get_input_details()["cache"]
        self.max_length = int(cache["shape_signature"][1])

    def generate(self, prompts, max_new_tokens, stop_token_id=None):
        """Greedy continuation of `prompts` (a list of token-id lists; 0 is padding).

        Returns one list of token ids per prompt: the prompt, then up to
        `max_new_tokens` new tokens (ending at `stop_token_id`, kept, if given).
        """
        lengths = np.array([len(p) for p in prompts])
        total = int(lengths.max()) + max_new_tokens
        if total > self.max_length:
            raise ValueError(
                f"The longest prompt plus `max_new_tokens` must fit the cache of "
                f"{self.max_length} positions. Received: {lengths.max()} + {max_new_tokens}"
            )
        tokens = np.zeros((len(prompts), int(lengths.max())), "int32")
        for row, prompt in enumerate(prompts):
            tokens[row, : len(prompt)] = prompt
        mask = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
        out = self.prefill(tokens=tokens, mask=mask)
        logits, cache = out["logits"], out["cache"]
        buffer = np.zeros((len(prompts), total), "int32")
        buffer[:, : tokens.shape[1]] = tokens
        done = np.zeros(len(prompts), bool)
        for index in range(int(lengths.min()), total):
            in_prompt = index < lengths
            token = np.where(in_prompt, buffer[:, index], logits.argmax(-1)).astype("int32")
            buffer[:, index] = token
            if stop_token_id is not None:
                done |= ~in_prompt & (token == stop_token_id)
            if done.all() or index + 1 == total:
                break
            out = self.decode(token=token, cache=cache, index=np.array(index, "int32"))
            logits, cache = out["logits"], out["cache"]
        results = []
        for row, length in enumerate(lengths):
            ids = buffer[row, : length + max_new_tokens].tolist()
            if stop_token_id is not None and stop_token_id in ids[length:]:
                ids = ids[: ids.index(stop_token_id, length) + 1]
            results.append(ids)
        return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the .tflite file from export_generator")
    parser.add_argument("vocabulary", help="the JSON vocabulary: characters, first_id")
    parser.add_argument("prompt")
    parser.add_argument("--new-chars", type=int, default=100)
    args = parser.parse_args(argv)
    with open(args.vocabulary) as handle:
        vocabulary = json.load(handle)
    characters, first_id = vocabulary["characters"], vocabulary["first_id"]
    char_to_id = {c: i + first_id for i, c in enumerate(characters)}
    generator = LiteRTGenerator(args.model)
    (ids,) = generator.generate(
        [[char_to_id[c] for c in args.prompt]], args.new_chars, char_to_id.get("\n")
    )
    text = "".join(characters[i - first_id] for i in ids if i >= first_id)
    print(json.dumps({"text": text, "ids": ids}))


if __name__ == "__main__":
    main()
