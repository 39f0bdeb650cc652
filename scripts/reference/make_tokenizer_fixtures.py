#!/usr/bin/python3
"""Generate reference fixtures for engine/tokenizer.

Run with Debian's interpreter (it has python3-sentencepiece):

    /usr/bin/python3 scripts/reference/make_tokenizer_fixtures.py [outdir]

Writes to testdata/tokenizer/ by default:

  spm_llama/   tokenizer.model (BPE, byte_fallback, dummy prefix, nmt_nfkc,
               split_digits) + expected.json from Python sentencepiece
  spm_gemma/   tokenizer.model (BPE, no dummy prefix, whitespace kept,
               identity normalisation, user-defined <start_of_turn> /
               <end_of_turn>) + expected.json
  bpe_gpt2/, bpe_smollm/, bpe_llama3/, bpe_qwen2/
               byte-level BPE tokenizer.json files built by a small BPE
               trainer below, tokenizer_config.json / generation_config.json,
               and expected.json from the reference encoder below.

There is no Hugging Face `tokenizers` library here, so the byte-level
reference encoder is written out in this script: pre-tokenisation with the
stdlib `re` module (\\p{L}, \\p{N} and \\s emulated by explicit character
classes built from unicodedata; \\s is the Unicode White_Space property),
GPT-2's bytes-to-unicode map and rank-ordered BPE merges.
"""

import json
import os
import sys
import tempfile
import unicodedata

import sentencepiece as spm

CORPUS = """\
The quick brown fox jumps over the lazy dog. The dog didn't care; it's lazy.
Hello, world! Hello again, world. How are you doing today? I'm fine, thanks.
We'll see what they've got: 12 apples, 345 oranges and 6789 bananas.
Prices rose 3.5% in 2023, from $1,024.99 to $1,099.00 (approx.).
Call 555-0199 or email someone@example.com before 10:30 a.m. on 2024-01-15.
Café, naïve, résumé, façade, jalapeño, Zürich, Ångström, São Paulo, crème brûlée.
Straße, Übermut, Ærøskøbing, Łódź, Ελληνικά γράμματα, Русский текст здесь.
日本語のテキストです。東京は大きい都市です。中文文本也在这里。你好，世界！
한국어 문장도 있습니다. 안녕하세요.
Emoji time 😀 🎉 👍🏽 ❤️ 🚀 — and some symbols: © ® ™ ± × ÷ → ← ∞ ≠ ≤ ≥.
def main():\n    print("hello")\n    return 0
for (int i = 0; i < n; i++) { sum += a[i]; }
    Indented line with    multiple   spaces and\ttabs\tinside.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 10000 123456789 3.14159 2.71828.
"Quoted text", 'single quotes', (parentheses), [brackets], {braces}, <angles>.
THE END. They're here, we're there, you've seen it, she'll know, he'd go.
"""

TEST_STRINGS = [
    "",
    " ",
    "  ",
    "hello",
    "Hello world",
    " hello",
    "hello ",
    "  hello   world  ",
    "  hello   world  \n\n x",
    "line one\nline two\n",
    "\n\nleading newlines",
    "tabs\tand\ttabs",
    "mixed \t \n whitespace",
    "CRLF line\r\nnext line\r\n",
    "12345",
    "Prices: 1,024.99 and 3.5%!",
    "I'm sure they're here; we'll see, you've won, it's OK, he'd go.",
    "DON'T SHOUT, IT'S LOUD, WE'LL SEE",
    "Café naïve résumé Zürich",
    "e\u0301 combining accent",
    "ﬁ ligature and ① circled and ｆｕｌｌ width",
    "日本語のテキスト",
    "你好，世界！",
    "안녕하세요",
    "Emoji 😀 🎉 👍🏽 ❤️",
    "Unseen: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and 🦀🦀",
    "Ελληνικά and Русский",
    "<start_of_turn>user\nHi!<end_of_turn>\n",
    "def f(x):\n    return x * 2\n",
    "a" * 40,
    "!!!???...",
    "x\u00a0y nbsp",
    "٣٤٥ arabic-indic digits and Ⅻ roman",
    "  ",
    "\t",
    "end with space ",
]


def write_json(path, obj, indent=1):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=indent)
        f.write("\n")


# ---------------------------------------------------------------- SentencePiece


def train_spm(outdir, name, **kw):
    d = os.path.join(outdir, name)
    os.makedirs(d, exist_ok=True)
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        # Relative paths keep the temporary directory out of trainer_spec,
        # so regenerated models are byte-identical.
        os.chdir(tmp)
        corpus = "corpus.txt"
        with open(corpus, "w", encoding="utf-8") as f:
            # Repeat so the trainer sees enough frequency to build merges.
            for _ in range(3):
                f.write(CORPUS)
        prefix = "m"
        spm.SentencePieceTrainer.train(
            input=corpus,
            model_prefix=prefix,
            model_type="bpe",
            vocab_size=600,
            hard_vocab_limit=False,
            byte_fallback=True,
            split_digits=True,
            character_coverage=0.98,
            num_threads=1,
            minloglevel=2,
            **kw,
        )
        with open(prefix + ".model", "rb") as f:
            model = f.read()
        os.chdir(cwd)
    with open(os.path.join(d, "tokenizer.model"), "wb") as f:
        f.write(model)
    sp = spm.SentencePieceProcessor(model_proto=model)
    cases = []
    for s in TEST_STRINGS:
        ids = sp.encode(s)
        cases.append({
            "text": s,
            "ids": ids,
            "pieces": [sp.id_to_piece(i) for i in ids],
            "decoded": sp.decode(ids),
        })
    # Decoding of ids with control tokens around them.
    extra = []
    for s in ["Hello world", " leading", "日本"]:
        ids = [sp.bos_id()] + sp.encode(s) + [sp.eos_id()]
        extra.append({"ids": ids, "decoded": sp.decode(ids)})
    write_json(os.path.join(d, "expected.json"), {
        "vocab_size": sp.get_piece_size(),
        "bos": sp.bos_id(),
        "eos": sp.eos_id(),
        "unk": sp.unk_id(),
        "cases": cases,
        "decode_cases": extra,
    })


# -------------------------------------------------------------- byte-level BPE


def char_class(pred):
    """Regex class body covering all code points where pred is true."""
    ranges = []
    start = None
    for cp in range(0x110000 + 1):
        ok = cp < 0x110000 and not (0xD800 <= cp <= 0xDFFF) and pred(chr(cp))
        if ok and start is None:
            start = cp
        elif not ok and start is not None:
            ranges.append((start, cp - 1))
            start = None

    def esc(cp):
        return "\\U%08x" % cp

    return "".join(esc(a) if a == b else esc(a) + "-" + esc(b) for a, b in ranges)


WS_CHARS = [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680] + \
    list(range(0x2000, 0x200B)) + [0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
L = char_class(lambda c: unicodedata.category(c).startswith("L"))
N = char_class(lambda c: unicodedata.category(c).startswith("N"))
S = "".join("\\U%08x" % c for c in WS_CHARS)

import re  # noqa: E402

RE_GPT2 = re.compile(
    "'s|'t|'re|'ve|'m|'ll|'d| ?[%s]+| ?[%s]+| ?[^%s%s%s]+|[%s]+(?![^%s])|[%s]+"
    % (L, N, S, L, N, S, S, S))


def re_llama3(digits):
    return re.compile(
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n%s%s]?[%s]+|[%s]%s| ?[^%s%s%s]+[\\r\\n]*|[%s]*[\\r\\n]+|[%s]+(?![^%s])|[%s]+"
        % (L, N, L, N, digits, S, L, N, S, S, S, S))


RE_LLAMA3 = re_llama3("{1,3}")
RE_QWEN2 = re_llama3("")
RE_DIGIT = re.compile("[%s]" % N)

REGEX_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
REGEX_LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
REGEX_QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def findall(rx, s):
    out = [m.group(0) for m in rx.finditer(s)]
    assert "".join(out) == s, (s, out)
    return out


def pretok(style, s):
    if style == "gpt2":
        return findall(RE_GPT2, s)
    if style == "smollm":
        out = []
        pos = 0
        for m in RE_DIGIT.finditer(s):
            if m.start() > pos:
                out += findall(RE_GPT2, s[pos:m.start()])
            out.append(m.group(0))
            pos = m.end()
        if pos < len(s):
            out += findall(RE_GPT2, s[pos:])
        return out
    if style == "llama3":
        return findall(RE_LLAMA3, s)
    if style == "qwen2":
        return findall(RE_QWEN2, unicodedata.normalize("NFC", s))
    raise ValueError(style)


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


B2U = bytes_to_unicode()


def to_bl(word):
    return "".join(B2U[b] for b in word.encode("utf-8"))


def train_bpe(style, num_merges):
    freqs = {}
    for line in CORPUS.splitlines(keepends=True):
        for w in pretok(style, line):
            w = tuple(to_bl(w))
            freqs[w] = freqs.get(w, 0) + 1
    vocab = {}
    for b in range(256):
        vocab[B2U[b]] = len(vocab)
    merges = []
    words = dict(freqs)
    for _ in range(num_merges):
        pairs = {}
        for w, f in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + f
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        vocab[best[0] + best[1]] = len(vocab)
        new = {}
        for w, f in words.items():
            out = []
            i = 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + f
        words = new
    return vocab, merges


def bpe_word(word, ranks):
    parts = list(word)
    while len(parts) > 1:
        best, best_i = None, -1
        for i in range(len(parts) - 1):
            r = ranks.get((parts[i], parts[i + 1]))
            if r is not None and (best is None or r < best):
                best, best_i = r, i
        if best is None:
            break
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def encode_bl(style, s, vocab, ranks, ignore_merges):
    ids = []
    for w in pretok(style, s):
        bl = to_bl(w)
        if ignore_merges and bl in vocab:
            ids.append(vocab[bl])
            continue
        ids += [vocab[p] for p in bpe_word(bl, ranks)]
    return ids


def encode_bl_special(style, s, vocab, ranks, ignore_merges, specials):
    """Encode with special tokens in the text matched whole, longest first."""
    ids = []
    pos = 0
    seg = 0
    by_len = sorted(specials, key=lambda kv: -len(kv[0]))
    while pos < len(s):
        hit = None
        for content, sid in by_len:
            if s.startswith(content, pos):
                hit = (content, sid)
                break
        if hit:
            if seg < pos:
                ids += encode_bl(style, s[seg:pos], vocab, ranks, ignore_merges)
            ids.append(hit[1])
            pos += len(hit[0])
            seg = pos
        else:
            pos += 1
    if seg < len(s):
        ids += encode_bl(style, s[seg:], vocab, ranks, ignore_merges)
    return ids


def decode_bl(ids, inv, special_ids):
    u2b = {v: k for k, v in B2U.items()}
    out = bytearray()
    for i in ids:
        if i in special_ids:
            continue
        out += bytes(u2b[c] for c in inv[i])
    return out.decode("utf-8", errors="replace")


BL_STYLES = {
    # style: (specials, bos, eos list, add_bos, merges format, ignore_merges)
    "gpt2": (["<|endoftext|>"], None, ["<|endoftext|>"], False, "string", False),
    "smollm": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_start|>", ["<|endoftext|>", "<|im_end|>"], False, "pairs", False),
    "llama3": (["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
               "<|begin_of_text|>", ["<|end_of_text|>", "<|eot_id|>"], True, "pairs", True),
    "qwen2": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, ["<|im_end|>", "<|endoftext|>"], False, "string", False),
}

SPECIAL_TESTS = [
    "<|im_start|>user\nHello!<|im_end|>\n",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>",
    "text<|endoftext|>more text<|endoftext|>",
    "not special: <|im_start ",
]


def make_bytelevel(outdir, style):
    d = os.path.join(outdir, "bpe_" + style)
    os.makedirs(d, exist_ok=True)
    specials, bos, eos, add_bos, merges_fmt, ignore_merges = BL_STYLES[style]
    vocab, merges = train_bpe(style, 200)
    ranks = {m: i for i, m in enumerate(merges)}
    special_ids = []
    for s in specials:
        special_ids.append((s, len(vocab)))
        vocab[s] = len(vocab)
    inv = {v: k for k, v in vocab.items()}

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    if style == "gpt2":
        pre = byte_level
    elif style == "smollm":
        pre = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    else:
        rx = REGEX_LLAMA3 if style == "llama3" else REGEX_QWEN2
        pre = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": rx}, "behavior": "Isolated", "invert": False},
            dict(byte_level, use_regex=False)]}
    post = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    if add_bos:
        post = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos: {"id": bos, "ids": [vocab[bos]], "tokens": [bos]}}}
    tj = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": vocab[s], "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for s in specials],
        "normalizer": {"type": "NFC"} if style == "qwen2" else None,
        "pre_tokenizer": pre,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": ignore_merges,
            "vocab": vocab,
            "merges": [a + " " + b for a, b in merges] if merges_fmt == "string" else [[a, b] for a, b in merges],
        },
    }
    write_json(os.path.join(d, "tokenizer.json"), tj)
    cfg = {"add_bos_token": add_bos, "add_eos_token": False, "eos_token": eos[0],
           "added_tokens_decoder": {str(vocab[s]): {"content": s, "special": True} for s in specials}}
    if bos:
        cfg["bos_token"] = bos
    write_json(os.path.join(d, "tokenizer_config.json"), cfg)
    write_json(os.path.join(d, "generation_config.json"), {"eos_token_id": [vocab[e] for e in eos]})

    sids = {i for _, i in special_ids}
    cases = []
    for s in TEST_STRINGS + SPECIAL_TESTS:
        ids = encode_bl(style, s, vocab, ranks, ignore_merges)
        sp_ids = encode_bl_special(style, s, vocab, ranks, ignore_merges, special_ids)
        if add_bos:
            sp_ids = [vocab[bos]] + sp_ids
        cases.append({
            "text": s,
            "pretokens": pretok(style, s),
            "ids": ids,
            "ids_special": sp_ids,
            "decoded": decode_bl(ids, inv, sids),
            "decoded_special": decode_bl(sp_ids, inv, sids),
        })
    write_json(os.path.join(d, "expected.json"), {
        "vocab_size": len(vocab),
        "bos": vocab[bos] if bos else -1,
        "eos": [vocab[e] for e in eos],
        "cases": cases,
    })


def make_random_pretokens(outdir, n=300):
    """Random strings over a tricky alphabet, pre-tokenised by each pattern."""
    import random
    rng = random.Random(1234)
    alphabet = list("aZ'sStTrRemlLdvV 1 2  \t\n\r!?.,-_()") + \
        ["\u00e9", "\u017f", "\u00a0", "\u3000", "\u65e5", "\u0663", "\u216b", "\U0001F600", "\u0301", "\u2028"]
    cases = []
    for _ in range(n):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        cases.append({"text": s, **{st: pretok(st, s) for st in ("gpt2", "smollm", "llama3", "qwen2")}})
    write_json(os.path.join(outdir, "pretok_random.json"), cases, indent=None)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "..", "testdata", "tokenizer")
    outdir = os.path.normpath(outdir)
    train_spm(outdir, "spm_llama", add_dummy_prefix=True, normalization_rule_name="nmt_nfkc")
    train_spm(outdir, "spm_gemma", add_dummy_prefix=False, remove_extra_whitespaces=False,
              normalization_rule_name="identity", allow_whitespace_only_pieces=True,
              user_defined_symbols=["<start_of_turn>", "<end_of_turn>"])
    for style in BL_STYLES:
        make_bytelevel(outdir, style)
    make_random_pretokens(outdir)
    print("wrote fixtures to", outdir)


if __name__ == "__main__":
    main()
