"""Print the nested-system figures (specs/nested_system.md, cms.md, self_modifying_titans.md, hope.md): largest error of each equivalence, and the diagrams of the momentum, Adam and M3 systems.

    python scripts/nested_figures.py        # NumPy and array_api_strict, float64; under a minute on one core

Each row is ``max |a - b|`` between two routes; the references written out by hand here are plain NumPy loops.
The rows marked "must be LARGE" are differences that show two computations are not the same one.
"""
import numpy as np
import refmem
from refmem.nested.momentum_mlp import train_momentum_mlp, momentum_mlp_system
from refmem.nested.cms import cms_recurrent, cms_chunked, cms_system
from refmem.nested import run
from refmem.nested.self_modifying_titans import self_modifying_titans_recurrent, self_modifying_titans_chunked, random_memories
from refmem.nested.hope import hope_recurrent, hope_chunked
from refmem.nested.optimizer_systems import adam_system, train_linear
from refmem.optimizers import make
from refmem.optimizers.local_surprise import weight_gradient

def mx(a, b): return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
g = np.random.default_rng(0)
rows = []
# momentum
def mlp_grad(W1, W2, x, t):
    a = np.tanh(W2 @ x); r = x + W1 @ a - t
    return np.outer(r, a), np.outer((W1.T @ r) * (1 - a * a), x)
d, h, N = 4, 6, 200
W1, W2 = g.standard_normal((d, h)) / 3, g.standard_normal((h, d)) / 3
X, T = g.standard_normal((N, d)), g.standard_normal((N, d))
for method in ("closed", "iterative"):
    Ws, _ = train_momentum_mlp((W1, W2), X, T, 0.01, 0.9, method=method)
    A1, A2, m1, m2, err = W1, W2, 0 * W1, 0 * W2, 0.0
    for i in range(N):
        g1, g2 = mlp_grad(A1, A2, X[i], T[i]); m1, m2 = 0.9 * m1 + 0.01 * g1, 0.9 * m2 + 0.01 * g2
        A1, A2 = A1 - m1, A2 - m2
        err = max(err, mx(Ws[i + 1][0], A1), mx(Ws[i + 1][1], A2))
    rows.append((f"momentum MLP two-level system ({method}) vs hand-written momentum SGD, N={N}", err))
bad, _ = train_momentum_mlp((W1, W2), X, T, 0.01, 0.9, order=("W", "m"))
good, _ = train_momentum_mlp((W1, W2), X, T, 0.01, 0.9)
rows.append(("wrong order vs derived order: max trajectory difference (must be LARGE)", max(mx(a[0], b[0]) for a, b in zip(good, bad)))); rows.append(("max |W| along the momentum run", max(float(np.abs(w).max()) for p in good for w in p)))
# adam
Wl = g.standard_normal((3, 5)) / 2; Xl, Tl = g.standard_normal((N, 5)), g.standard_normal((N, 3))
for name, hp in (("adam", dict(lr=0.01, weight_decay=0.1)), ("adamw", dict(lr=0.01, weight_decay=0.1))):
    got = train_linear(adam_system(decoupled=name == "adamw", **hp), Wl, Xl, Tl)
    opt = make(name, **hp); st = opt.init(Wl); W = Wl; err = 0.0
    for i in range(N):
        W, st, _ = opt.step(W, weight_gradient("squared_error", W, Xl[i], Tl[i]), st); err = max(err, mx(got[i + 1], W))
    rows.append((f"{name} declared system vs refmem.optimizers.make('{name}'), N={N}", err))
# cms
blocks = tuple((g.standard_normal((d, h)) / 3, g.standard_normal((h, d)) / 3) for _ in range(3))
Xc, Tc = g.standard_normal((2, 256, d)), g.standard_normal((2, 256, d))
for var, w in (("sequential", None), ("nested", None), ("independent", (0.5, 0.3, 0.2))):
    y1, p1 = cms_recurrent(Xc, blocks, (16, 8, 2), 0.05, targets=Tc, variant=var, weights=w)
    y2, p2 = cms_chunked(Xc, blocks, (16, 8, 2), 0.05, targets=Tc, variant=var, weights=w)
    rows.append((f"CMS {var}: chunk-parallel vs token-by-token (C=16,8,2; T=256)", max(mx(y1, y2), mx(p1[0][0], p2[0][0]))))
y1, _ = cms_recurrent(Xc, blocks, (16, 8, 2), 0.05, targets=Tc)
y3, _ = cms_recurrent(Xc, blocks, (16, 8, 2), 0.05, targets=Tc, method="iterative")
rows.append(("CMS closed vs iterative (CG) block levels (T=256)", mx(y1, y3)))
st_, _ = run(cms_system(blocks, (16, None, 2), 0.05), {f"block{i+1}": b for i, b in enumerate(blocks)}, list(zip(Xc[0], Tc[0])))
_, pp = cms_recurrent(Xc[0], blocks, (16, None, 2), 0.05, targets=Tc[0])
rows.append(("CMS declared nested system vs scan (T=256)", max(mx(st_[f"block{i+1}"][j], pp[i][j]) for i in range(3) for j in range(2))))
# all C=1 vs per-step GD
def chain_grads(bl, x, t):
    hs, acts = [x], []
    for A, B in bl:
        a = np.tanh(B @ hs[-1]); acts.append(a); hs.append(hs[-1] + A @ a)
    gy = hs[-1] - t; out = [None] * len(bl)
    for i in range(len(bl) - 1, -1, -1):
        A, B = bl[i]; a = acts[i]; gz = (A.T @ gy) * (1 - a * a)
        out[i] = (np.outer(gy, a), np.outer(gz, hs[i])); gy = gy + B.T @ gz
    return hs[-1], out
y, _ = cms_recurrent(Xc[0], blocks, (1, 1, 1), 0.05, targets=Tc[0]); bl = list(blocks); err = 0.0
for i in range(256):
    yy, gr = chain_grads(bl, Xc[0, i], Tc[0, i]); err = max(err, mx(y[i], yy))
    bl = [(A - 0.05 * a, B - 0.05 * b) for (A, B), (a, b) in zip(bl, gr)]
rows.append(("CMS all C=1 vs hand-written per-step GD on every block (T=256)", err))
# titans
x = g.standard_normal((2, 512, d)); Wq = np.eye(d) + 0.3 * g.standard_normal((d, d)); mem = random_memories(1, d, np)
for C, Cm in ((1, 1), (8, 4), (16, 64)):
    o1, s1 = self_modifying_titans_recurrent(x, Wq, memories=mem, chunk_size=C, memory_chunk_size=Cm)
    o2, s2 = self_modifying_titans_chunked(x, Wq, memories=mem, chunk_size=C, memory_chunk_size=Cm)
    rows.append((f"self-modifying Titans segment-at-a-time vs token-by-token (C={C}, memory C={Cm}, T=512)", mx(o1, o2)))
o8, _ = self_modifying_titans_chunked(x, Wq, memories=mem, chunk_size=8)
o1, _ = self_modifying_titans_chunked(x, Wq, memories=mem, chunk_size=1)
rows.append(("self-modifying Titans C=8 vs C=1 (a DIFFERENT computation: must be large)", mx(o1, o8)))
# hope
tg = g.standard_normal((2, 512, d))
kw = dict(cms_params=blocks, cms_chunk_sizes=(16, 8, 2), cms_eta=0.05, targets=tg, memories=mem, chunk_size=8, memory_chunk_size=4)
y1, _ = hope_recurrent(x, Wq, **kw); y2, _ = hope_chunked(x, Wq, **kw)
rows.append(("HOPE chunked vs recurrent (Titans C=8/4, CMS C=16,8,2; T=512)", mx(y1, y2)))
with refmem.backend("array_api_strict") as xs:
    c = lambda a: xs.asarray(a)
    kw2 = dict(kw, cms_params=tuple((c(a), c(b)) for a, b in blocks), targets=c(tg), memories={n: (c(a), c(b)) for n, (a, b) in mem.items()})
    ys, _ = hope_chunked(c(x), c(Wq), **kw2)
rows.append(("HOPE numpy vs array_api_strict (T=512)", mx(y2, np.from_dlpack(ys))))
xl = g.standard_normal((2, 4096, d)); tl = g.standard_normal((2, 4096, d))
yl, _ = hope_chunked(xl, Wq, **dict(kw, targets=tl))
rows.append(("HOPE T=4096: max |y| (finite)", float(np.abs(yl).max())))
for r in rows: print(f"{r[1]:.2e}  {r[0]}")
print(momentum_mlp_system().diagram())
from refmem.nested.optimizer_systems import m3_system, train_m3, minibatch_gradient
Wm = g.standard_normal((3, 4)) / 2; Xm, Tm = g.standard_normal((200, 8, 4)), g.standard_normal((200, 8, 3))
for orth in ("polar", "cubic", "quintic"):
    hp = dict(lr=0.01, betas=(0.9, 0.999, 0.9), alpha=0.5, eps=1e-8, frequency=10, orthogonalize=orth)
    got = train_m3(m3_system(**hp), Wm, Xm, Tm); opt = make("m3", **hp); st = opt.init(Wm); A = Wm; err = 0.0
    for i in range(200):
        A, st, _ = opt.step(A, minibatch_gradient("squared_error", A, Xm[i], Tm[i]), st); err = max(err, mx(got[i + 1], A))
    print(f"{err:.2e}  M3 ({orth}) declared system vs refmem.optimizers.make('m3'), N=200, f=10")
print(m3_system(frequency=10).diagram())
print(adam_system().diagram())
