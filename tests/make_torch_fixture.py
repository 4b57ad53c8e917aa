#!/usr/bin/python3
"""make_torch_fixture.py - an independent PyTorch reference for one LoRA step.

Run by hand (not in CI), from anywhere, with Debian's python3-torch:

    apt-get install python3-torch        # torch 1.13 on Debian bookworm
    /usr/bin/python3 tests/make_torch_fixture.py

It needs nothing but torch (no transformers, peft or safetensors packages): a
small Qwen2/LLaMA model and PEFT's LoRA Linear are written out below following
Hugging Face semantics (RMSNorm in the HF form, rotate_half RoPE, GQA by
repeat_kv, causal softmax attention, SwiGLU MLP, untied lm_head, q/k/v biases,
cross-entropy averaged over targets != -100).

Everything is seeded (torch.manual_seed(SEED)); weights are drawn, rounded to
float32 (that is what is stored), and the reference is computed in float64 on
those rounded values. Before writing, the script checks itself: autograd LoRA
gradients against central finite differences, and torch.optim.AdamW against
the update written out by hand.

It writes tests/fixtures/lora_step/ (about 130 KB, committed):
  model/config.json, model/model.safetensors   HF Qwen2ForCausalLM directory
  adapter_before/adapter_config.json,
  adapter_before/adapter_model.safetensors      PEFT LoRA directory (A and B both
                                                random, so every gradient is nonzero)
  batch.json        {"inputs": [[B][T]], "targets": [[B][T]]}, masked targets -1
  expected.safetensors
      "loss" [1]                   mean cross-entropy of the batch
      "grad.<peft name>"           d loss / d factor, for every lora_A / lora_B
      "after.<peft name>"          the factor after one torch.optim.AdamW step
                                   (lr 1e-2, betas (0.9, 0.999), eps 1e-8,
                                   weight_decay 0.01, no clipping)
tests/test_torch_fixture.c replays the same step in C and compares every tensor.
"""

import json
import math
import os
import struct

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "lora_step")

CFG = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden=48, vocab=64,
           rms_eps=1e-6, rope_theta=10000.0, max_pos=64)
RANK, ALPHA = 4, 8.0
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
B, T = 2, 8
ADAMW = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
DT = torch.float64
# Seed for everything. Adam's first step moves each entry by about lr * g / (|g| + eps),
# whose slope in g is lr * eps / |g|^2: an entry with |g| ~ 1e-6 would turn float32
# noise in the C gradient into visible noise in the updated adapter. The seed is
# chosen so that every gradient entry has |g| >= MIN_GRAD (asserted below).
SEED = 3
MIN_GRAD = 2e-5


# ---------------------------------------------------------------- safetensors
def write_safetensors(path, tensors):
    """tensors: list of (name, tensor); written as little-endian F32 in order."""
    header, blobs, off = {}, [], 0
    for name, t in tensors:
        data = t.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((8 - len(hjson) % 8) % 8)      # pad like HF: data 8-aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    """Reads back what write_safetensors wrote (round-trip check)."""
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    base, out = 8 + n, {}
    for name, h in header.items():
        b0, b1 = h["data_offsets"]
        vals = struct.unpack("<%df" % ((b1 - b0) // 4), raw[base + b0:base + b1])
        out[name] = torch.tensor(vals, dtype=torch.float32).reshape(h["shape"])
    return out


# ---------------------------------------------------------------- the model
def rms_norm(x, w, eps):
    # HF LlamaRMSNorm / Qwen2RMSNorm (here already in float64)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def rope_cos_sin(T, hd, theta):
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=DT) / hd))
    freqs = torch.outer(torch.arange(T, dtype=DT), inv_freq)      # [T][hd/2]
    emb = torch.cat((freqs, freqs), dim=-1)                        # [T][hd]
    return emb.cos(), emb.sin()


def repeat_kv(x, n_rep):
    # [B][kvh][T][hd] -> [B][kvh*n_rep][T][hd], head h uses kv head h // n_rep
    b, kvh, t, hd = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :, :].expand(b, kvh, n_rep, t, hd).reshape(b, kvh * n_rep, t, hd)


def lora_linear(x, w, bias, ad, scaling):
    """PEFT LoraLayer Linear: base(x) + lora_B(lora_A(dropout(x))) * scaling."""
    y = x @ w.t()
    if bias is not None:
        y = y + bias
    if ad is not None:
        a, b = ad
        y = y + ((x @ a.t()) @ b.t()) * scaling
    return y


def forward(W, L, tokens, targets):
    c = CFG
    dim, nh, nkv = c["dim"], c["n_heads"], c["n_kv_heads"]
    hd = dim // nh
    s = ALPHA / RANK
    bsz, t = tokens.shape
    cos, sin = rope_cos_sin(t, hd, c["rope_theta"])
    mask = torch.full((t, t), float("-inf"), dtype=DT).triu(1)
    x = W["model.embed_tokens.weight"][tokens]                     # [B][T][dim]
    for l in range(c["n_layers"]):
        p = "model.layers.%d." % l

        def lin(name, inp, sub):
            key = p + sub + "." + name
            return lora_linear(inp, W[key + ".weight"], W.get(key + ".bias"),
                               L.get((l, name)), s)

        h = rms_norm(x, W[p + "input_layernorm.weight"], c["rms_eps"])
        q = lin("q_proj", h, "self_attn").view(bsz, t, nh, hd).transpose(1, 2)
        k = lin("k_proj", h, "self_attn").view(bsz, t, nkv, hd).transpose(1, 2)
        v = lin("v_proj", h, "self_attn").view(bsz, t, nkv, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k, v = repeat_kv(k, nh // nkv), repeat_kv(v, nh // nkv)
        att = (q @ k.transpose(2, 3)) / math.sqrt(hd) + mask
        att = torch.softmax(att, dim=-1)
        o = (att @ v).transpose(1, 2).reshape(bsz, t, dim)
        x = x + lin("o_proj", o, "self_attn")
        h = rms_norm(x, W[p + "post_attention_layernorm.weight"], c["rms_eps"])
        g = torch.nn.functional.silu(lin("gate_proj", h, "mlp")) * lin("up_proj", h, "mlp")
        x = x + lin("down_proj", g, "mlp")
    x = rms_norm(x, W["model.norm.weight"], c["rms_eps"])
    logits = x @ W["lm_head.weight"].t()
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, c["vocab"]), targets.reshape(-1), ignore_index=-100)


# ---------------------------------------------------------------- setup
def f32(t):
    """Round to float32 (what is stored), compute in float64."""
    return t.to(torch.float32).to(DT)


def make_weights():
    c = CFG
    dim, hid, voc = c["dim"], c["hidden"], c["vocab"]
    kv = dim // c["n_heads"] * c["n_kv_heads"]
    W = {}

    def mat(name, *shape):
        W[name] = f32(torch.randn(*shape) * 0.2)

    def norm(name, n):
        W[name] = f32(1.0 + 0.1 * torch.randn(n))

    mat("model.embed_tokens.weight", voc, dim)
    for l in range(c["n_layers"]):
        p = "model.layers.%d." % l
        norm(p + "input_layernorm.weight", dim)
        mat(p + "self_attn.q_proj.weight", dim, dim)
        mat(p + "self_attn.q_proj.bias", dim)
        mat(p + "self_attn.k_proj.weight", kv, dim)
        mat(p + "self_attn.k_proj.bias", kv)
        mat(p + "self_attn.v_proj.weight", kv, dim)
        mat(p + "self_attn.v_proj.bias", kv)
        mat(p + "self_attn.o_proj.weight", dim, dim)
        norm(p + "post_attention_layernorm.weight", dim)
        mat(p + "mlp.gate_proj.weight", hid, dim)
        mat(p + "mlp.up_proj.weight", hid, dim)
        mat(p + "mlp.down_proj.weight", dim, hid)
    norm("model.norm.weight", dim)
    mat("lm_head.weight", voc, dim)
    for w in W.values():
        w.requires_grad_(False)                                    # frozen base
    return W


def io_dims(name):
    c = CFG
    dim, hid = c["dim"], c["hidden"]
    kv = dim // c["n_heads"] * c["n_kv_heads"]
    return {"q_proj": (dim, dim), "k_proj": (dim, kv), "v_proj": (dim, kv),
            "o_proj": (dim, dim), "gate_proj": (dim, hid), "up_proj": (dim, hid),
            "down_proj": (hid, dim)}[name]


def peft_name(l, name, ab):
    sub = "mlp" if name in ("gate_proj", "up_proj", "down_proj") else "self_attn"
    return "base_model.model.model.layers.%d.%s.%s.lora_%s.weight" % (l, sub, name, ab)


def make_adapter():
    L, order = {}, []
    for l in range(CFG["n_layers"]):
        for name in TARGETS:
            fin, fout = io_dims(name)
            a = f32(torch.randn(RANK, fin) * 0.1).requires_grad_(True)
            b = f32(torch.randn(fout, RANK) * 0.1).requires_grad_(True)
            L[(l, name)] = (a, b)
            order += [(peft_name(l, name, "A"), a), (peft_name(l, name, "B"), b)]
    return L, order


# ---------------------------------------------------------------- self-checks
def check_finite_differences(W, L, order, tokens, targets):
    """Autograd vs central differences (float64) for a few entries per tensor."""
    gen = torch.Generator().manual_seed(1)
    h = 1e-6
    worst = 0.0
    for pname, p in order[::5] + [order[-1]]:                    # a spread of tensors
        for _ in range(2):
            i = int(torch.randint(p.numel(), (1,), generator=gen))
            with torch.no_grad():
                orig = p.view(-1)[i].item()
                p.view(-1)[i] = orig + h
                lp = forward(W, L, tokens, targets).item()
                p.view(-1)[i] = orig - h
                lm = forward(W, L, tokens, targets).item()
                p.view(-1)[i] = orig
            fd = (lp - lm) / (2 * h)
            ag = p.grad.view(-1)[i].item()
            err = abs(fd - ag) / max(1e-6, abs(ag))
            worst = max(worst, err)
            assert err < 1e-5, "%s[%d]: autograd %.10g vs finite diff %.10g" % (pname, i, ag, fd)
    print("finite differences: worst relative error %.3g" % worst)


def adamw_by_hand(p0, g):
    lr, (b1, b2), eps, wd = ADAMW["lr"], ADAMW["betas"], ADAMW["eps"], ADAMW["weight_decay"]
    p = p0 * (1 - lr * wd)
    m, v = (1 - b1) * g, (1 - b2) * g * g
    mhat, vhat = m / (1 - b1), v / (1 - b2)
    return p - lr * mhat / (vhat.sqrt() + eps)


# ---------------------------------------------------------------- main
def main():
    torch.manual_seed(SEED)
    W = make_weights()
    L, order = make_adapter()
    tokens = torch.randint(0, CFG["vocab"], (B, T))
    targets = torch.roll(tokens, -1, dims=1).clone()
    targets[:, -1] = torch.randint(0, CFG["vocab"], (B,))
    targets[0, 0] = -100                                           # a few masked
    targets[0, 5] = -100
    targets[1, 3] = -100

    before = [(n, p.detach().clone()) for n, p in order]
    loss = forward(W, L, tokens, targets)
    loss.backward()
    for n, p in order:
        assert p.grad is not None and p.grad.abs().min() >= MIN_GRAD, \
            "seed %d: gradient entry below %g in %s; pick another SEED" % (SEED, MIN_GRAD, n)
    grads = [(n, p.grad.detach().clone()) for n, p in order]
    check_finite_differences(W, L, order, tokens, targets)

    opt = torch.optim.AdamW([p for _, p in order], **ADAMW)
    opt.step()
    after = [(n, p.detach().clone()) for n, p in order]
    for (n, p0), (_, g), (_, p1) in zip(before, grads, after):
        d = (adamw_by_hand(p0, g) - p1).abs().max().item()
        assert d < 1e-12, "AdamW by hand differs for %s: %g" % (n, d)
    print("loss %.8f, %d LoRA tensors, AdamW matches the hand-written update"
          % (loss.item(), len(order)))

    # ---- write
    os.makedirs(os.path.join(OUT, "model"), exist_ok=True)
    os.makedirs(os.path.join(OUT, "adapter_before"), exist_ok=True)
    c = CFG
    config = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "hidden_size": c["dim"], "intermediate_size": c["hidden"],
        "num_hidden_layers": c["n_layers"], "num_attention_heads": c["n_heads"],
        "num_key_value_heads": c["n_kv_heads"], "rms_norm_eps": c["rms_eps"],
        "rope_theta": c["rope_theta"], "vocab_size": c["vocab"],
        "max_position_embeddings": c["max_pos"], "tie_word_embeddings": False,
        "hidden_act": "silu", "torch_dtype": "float32",
    }
    with open(os.path.join(OUT, "model", "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    write_safetensors(os.path.join(OUT, "model", "model.safetensors"), list(W.items()))

    adapter_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": ALPHA,
        "target_modules": TARGETS, "lora_dropout": 0.0, "bias": "none",
        "use_rslora": False, "fan_in_fan_out": False, "init_lora_weights": True,
        "base_model_name_or_path": "fedpeft-torch-fixture",
    }
    with open(os.path.join(OUT, "adapter_before", "adapter_config.json"), "w") as f:
        json.dump(adapter_config, f, indent=2)
        f.write("\n")
    write_safetensors(os.path.join(OUT, "adapter_before", "adapter_model.safetensors"), before)

    tg = targets.clone()
    tg[tg == -100] = -1                                            # C's mask convention
    with open(os.path.join(OUT, "batch.json"), "w") as f:
        json.dump({"inputs": tokens.tolist(), "targets": tg.tolist()}, f)
        f.write("\n")

    expected = [("loss", loss.detach().reshape(1))]
    expected += [("grad." + n, g) for n, g in grads]
    expected += [("after." + n, p) for n, p in after]
    path = os.path.join(OUT, "expected.safetensors")
    write_safetensors(path, expected)
    back = read_safetensors(path)
    for n, t in expected:
        assert torch.equal(back[n], t.to(torch.float32)), "round trip failed for " + n

    total = 0
    for root, _, files in os.walk(OUT):
        total += sum(os.path.getsize(os.path.join(root, fn)) for fn in files)
    print("wrote %s (%d bytes)" % (OUT, total))


if __name__ == "__main__":
    main()
