"""A CPU model of the fused CUDA LSTM kernels (csrc/cuda/lstm/): the same weight packing, shared-memory layouts,
wavefront schedule, cluster exchange and per-cell arithmetic, written with the kernels' names and indices, one
block of a cluster at a time. Run in float64 against PyTorch's LSTM it checks the index algebra exactly, which the
GPU-less CI cannot check on the kernels themselves. Barriers are phase boundaries here: every block finishes a
phase before any block starts the next, which is what the kernels' barriers guarantee.

It models the arithmetic's order, not its rounding (the step-by-step plan, tested in every dtype, models that).
"""

from __future__ import annotations

import torch

K_ROWS = 16


def pack(weights, l, with_input, H, Hp, cluster, units):
    """pack_weights in lstm.cu: (cluster, 4 units, Kw), block j's rows the i, f, g, o rows of its units."""
    def padded(w):
        out = w.new_zeros(4, Hp, Hp)
        out[:, :H, :H] = w.view(4, H, H)
        return out

    w = torch.cat([padded(weights[4 * l]), padded(weights[4 * l + 1])], 2) if with_input \
        else padded(weights[4 * l + 1])
    return w.view(4, cluster, units, w.shape[2]).permute(1, 0, 2, 3).reshape(cluster, 4 * units, -1)


def sigmoid(x):
    return 1 / (1 + torch.exp(-x))


class Group:
    """One launch: layers [l0, l0 + n) of the LSTM, a cluster of Hp / units blocks per 16 rows."""

    def __init__(self, weights, l0, n, H, Hp, units, max_layers):
        self.l0, self.n, self.H, self.Hp, self.hs = l0, n, H, Hp, units
        self.cluster = Hp // units
        self.G = max_layers  # the kernel's compile-time kLayers: it sets the hbuf row layout
        self.w = [pack(weights, l0 + g, g > 0, H, Hp, self.cluster, units) for g in range(n)]
        self.ldh = Hp * (2 * max_layers - 1)

    def off_h(self, g):
        return 2 * g * self.Hp

    def off_x(self, g):
        return (2 * g - 1) * self.Hp

    def cells(self, row0, B, rank):
        """Every (r, u) of a block, with its batch row b and unit, and whether it is real (not padding)."""
        r = torch.arange(K_ROWS).repeat_interleave(self.hs)
        u = torch.arange(self.hs).repeat(K_ROWS)
        b, unit = row0 + r, rank * self.hs + u
        return r, u, b, unit, (b < B) & (unit < self.H)

    def forward(self, proj, bias, h0, c0, masks, hidden, cell, gates, c_n):
        T, B, H, Hp, hs, n = proj.shape[0], proj.shape[1], self.H, self.Hp, self.hs, self.n
        for row0 in range(0, B, K_ROWS):
            hbuf = [proj.new_zeros(2, K_ROWS, self.ldh) for _ in range(self.cluster)]
            c = {}
            for j in range(self.cluster):
                for g in range(n):
                    for r in range(min(K_ROWS, B - row0)):
                        hbuf[j][:, r, self.off_h(g):self.off_h(g) + H] = h0[g][row0 + r]
                    r, u, b, unit, valid = self.cells(row0, B, j)
                    c[j, g] = torch.where(valid, c0[g][b.clamp(max=B - 1), unit.clamp(max=H - 1)], 0)
            for s in range(T + n - 1):
                cur, nxt = s % 2, 1 - s % 2
                gates_s = {}
                for j in range(self.cluster):  # phase 1: the products, from each block's own hbuf
                    for g in range(n):
                        if 0 <= s - g < T:
                            lo, depth = (0, Hp) if g == 0 else (self.off_x(1), 2 * Hp)
                            a = hbuf[j][cur][:, lo:lo + depth]
                            gates_s[j, g] = a @ self.w[g][j].T  # ColMajor B: B(k, n) = slice[n][k]
                for j in range(self.cluster):  # phase 2: the cells, writing every block's next buffer
                    r, u, b, unit, valid = self.cells(row0, B, j)
                    r, u, b, unit = r[valid], u[valid], b[valid], unit[valid]
                    for g in range(n):
                        t = s - g
                        if not 0 <= t < T:
                            continue
                        pre = [gates_s[j, g][r, q * hs + u] + (proj[t, b, q * H + unit] if g == 0
                                                               else bias[g][q * H + unit]) for q in range(4)]
                        i, f, gg, o = sigmoid(pre[0]), sigmoid(pre[1]), torch.tanh(pre[2]), sigmoid(pre[3])
                        cn = f * c[j, g][valid] + i * gg
                        c[j, g][valid] = cn
                        h = o * torch.tanh(cn)
                        keep = masks[g + 1][t, b, unit] if g + 1 < n and masks[g + 1] is not None else 1.0
                        for jj in range(self.cluster):
                            hbuf[jj][nxt][r, self.off_h(g) + unit] = h
                            if g + 1 < n:
                                hbuf[jj][nxt][r, self.off_x(g + 1) + unit] = h * keep
                        hidden[g][t + 1, b, unit] = h
                        cell[g][t, b, unit] = cn
                        for q, v in enumerate((i, f, gg, o)):
                            gates[g][t, b, q * H + unit] = v
                        if t == T - 1:
                            c_n[g][b, unit] = cn

    def backward(self, dy, c0, masks, cell, gates, grad_h_n, grad_c_n, d_pre, grad_h0, grad_c0):
        T, B, H, Hp, hs, n, top = dy.shape[0], dy.shape[1], self.H, self.Hp, self.hs, self.n, self.n - 1
        K = self.cluster
        for row0 in range(0, B, K_ROWS):
            dpre_s = {(j, g): dy.new_zeros(K_ROWS, 4 * hs) for j in range(K) for g in range(n)}
            # red per buffer: layer 0 [dh], layer 1 [dx | dh], each a slot per source block of 16 x hs
            red = [dy.new_zeros(2, K_ROWS * Hp * (2 * self.G - 1)) for _ in range(K)]
            red_dh = lambda g: K_ROWS * Hp * 2 * g  # noqa: E731
            red_dx = lambda g: K_ROWS * Hp * (2 * g - 1)  # noqa: E731
            dc = {}
            for j in range(K):
                r, u, b, unit, valid = self.cells(row0, B, j)
                for g in range(n):
                    dc[j, g] = torch.where(valid, grad_c_n[g][b.clamp(max=B - 1), unit.clamp(max=H - 1)], 0)
            for s in range(T + n):
                buf = s % 2
                acc_s = {}
                for j in range(K):  # phase 1: partial products over the block's own gate rows
                    for g in range(n):
                        if 1 <= s - (top - g) <= T:
                            acc_s[j, g] = dpre_s[j, g] @ self.w[g][j]  # RowMajor B: B(k, n) = slice[k][n]
                for j in range(K):  # phase 2: each unit's partial sums to its owner, slot j
                    for g in range(n):
                        if (j, g) not in acc_s:
                            continue
                        parts = 1 if g == 0 else 2
                        for part in range(parts):
                            is_dh = part == parts - 1
                            for dest in range(K):
                                v = acc_s[j, g][:, part * Hp + dest * hs:part * Hp + (dest + 1) * hs]
                                base = red_dh(g) if is_dh else red_dx(g)
                                slot = base + (j * K_ROWS + torch.arange(K_ROWS)[:, None]) * hs + torch.arange(hs)
                                red[dest][buf][slot] = v
                for j in range(K):  # phase 3: the cells of step t
                    r, u, b, unit, valid = self.cells(row0, B, j)
                    r, u, b, unit = r[valid], u[valid], b[valid], unit[valid]
                    for g in range(n):
                        k_steps = s - (top - g)
                        t = T - 1 - k_steps
                        if not 0 <= k_steps <= T:
                            continue
                        slots = lambda base: sum(red[j][buf][base + (jj * K_ROWS + r) * hs + u]  # noqa: E731
                                                 for jj in range(K))
                        dh_rec = slots(red_dh(g)) if k_steps >= 1 else torch.zeros_like(r, dtype=dy.dtype)
                        if k_steps == T:
                            grad_h0[g][b, unit] = dh_rec
                            grad_c0[g][b, unit] = dc[j, g][valid]
                            continue
                        if g == top:
                            dh = dh_rec + dy[t, b, unit]
                        else:
                            keep = masks[g + 1][t, b, unit] if masks[g + 1] is not None else 1.0
                            dh = dh_rec + slots(red_dx(g + 1)) * keep
                        if t == T - 1:
                            dh = dh + grad_h_n[g][b, unit]
                        i, f, gg, o = (gates[g][t, b, q * H + unit] for q in range(4))
                        c_t = cell[g][t, b, unit]
                        c_prev = cell[g][t - 1, b, unit] if t > 0 else c0[g][b, unit]
                        tc = torch.tanh(c_t)
                        dcell = dc[j, g][valid] + dh * o * (1 - tc * tc)
                        d = (dcell * gg * i * (1 - i), dcell * c_prev * f * (1 - f), dcell * i * (1 - gg * gg),
                             dh * tc * o * (1 - o))
                        dc[j, g][valid] = dcell * f
                        for q in range(4):
                            dpre_s[j, g][r, q * hs + u] = d[q]
                            d_pre[g][t, b, q * H + unit] = d[q]


def lstm(x, weights, h0, c0, masks, grad_output, grad_h_n, grad_c_n, Hp, units, max_layers):
    """The op's forward and backward as lstm.cu and csrc/cpu/lstm.cpp run them with the fused plan: groups of
    max_layers layers, the bottom layer's input projection before each group, the input and weight gradients after.
    masks: (L - 1, T, B, H) or None. Returns output, h_n, c_n, grad x, grad h0, grad c0 and the weight gradients."""
    L, (B, T, _), H = len(weights) // 4, x.shape, weights[1].shape[1]
    new = lambda *shape: x.new_zeros(*shape)  # noqa: E731
    hidden, cell, gates = new(L, T + 1, B, H), new(L, T, B, H), new(L, T, B, 4 * H)
    hidden[:, 0] = h0
    c_n = new(L, B, H)
    layer_mask = lambda l: None if masks is None or l == 0 else masks[l - 1]  # noqa: E731

    def layer_input(l):
        if l == 0:
            return x.transpose(0, 1).reshape(T * B, -1)
        h = hidden[l - 1, 1:]
        return (h if masks is None else h * masks[l - 1]).reshape(T * B, H)

    groups = [Group(weights, l0, min(max_layers, L - l0), H, Hp, units, max_layers) for l0 in range(0, L, max_layers)]
    for grp in groups:
        l0, n = grp.l0, grp.n
        proj = (layer_input(l0) @ weights[4 * l0].T + weights[4 * l0 + 2] + weights[4 * l0 + 3]).view(T, B, 4 * H)
        bias = [None] + [weights[4 * (l0 + g) + 2] + weights[4 * (l0 + g) + 3] for g in range(1, n)]
        masks_g = [layer_mask(l0 + g) if g > 0 else None for g in range(n)]
        grp.forward(proj, bias, h0[l0:l0 + n], c0[l0:l0 + n], masks_g, hidden[l0:l0 + n], cell[l0:l0 + n],
                    gates[l0:l0 + n], c_n[l0:l0 + n])
    output = hidden[L - 1, 1:].transpose(0, 1)
    d_pre, grad_h0, grad_c0 = new(L, T, B, 4 * H), new(L, B, H), new(L, B, H)
    dy = grad_output.transpose(0, 1)
    grad_x = None
    for grp in reversed(groups):
        l0, n = grp.l0, grp.n
        masks_g = [layer_mask(l0 + g) if g > 0 else None for g in range(n)]
        grp.backward(dy, c0[l0:l0 + n], masks_g, cell[l0:l0 + n], gates[l0:l0 + n], grad_h_n[l0:l0 + n],
                     grad_c_n[l0:l0 + n], d_pre[l0:l0 + n], grad_h0[l0:l0 + n], grad_c0[l0:l0 + n])
        dx = (d_pre[l0].reshape(T * B, 4 * H) @ weights[4 * l0]).view(T, B, -1)
        if l0 > 0:
            dy = dx if masks is None else dx * masks[l0 - 1]
        else:
            grad_x = dx.transpose(0, 1)
    grad_w = []
    for l in range(L):
        d = d_pre[l].reshape(T * B, 4 * H)
        grad_w += [d.T @ layer_input(l), d.T @ hidden[l, :T].reshape(T * B, H), d.sum(0), d.sum(0)]
    return [output, hidden[:, T], c_n, grad_x, grad_h0, grad_c0, *grad_w]
