"""The roofline reader of compiled GPU programs, on a hand-written HLO module with exact costs."""

import pytest

from benchmarks import gpu_roofline

# At 1e9 FLOP/s and 1e9 bytes/s a kernel's nanoseconds are max(its FLOPs, its bytes).
MODULE = """HloModule test

%add_f (s.a: f32[], s.b: f32[]) -> f32[] {
  %s.a = f32[] parameter(0)
  %s.b = f32[] parameter(1)
  ROOT %s.sum = f32[] add(%s.a, %s.b)
}

%fused_add (e.0: f32[1000], e.1: f32[1000]) -> f32[1000] {
  %e.0 = f32[1000]{0} parameter(0)
  %e.1 = f32[1000]{0} parameter(1)
  ROOT %e.add = f32[1000]{0} add(%e.0, %e.1)
}

%body (t: (s32[], f32[1000])) -> (s32[], f32[1000]) {
  %t = (s32[], f32[1000]{0}) parameter(0)
  %t.i = s32[] get-tuple-element(%t), index=0
  %t.v = f32[1000]{0} get-tuple-element(%t), index=1
  %t.f = f32[1000]{0} fusion(%t.v, %t.v), kind=kLoop, calls=%fused_add
  ROOT %t.r = (s32[], f32[1000]{0}) tuple(%t.i, %t.f)
}

%cond (c: (s32[], f32[1000])) -> pred[] {
  %c = (s32[], f32[1000]{0}) parameter(0)
  ROOT %c.true = pred[] constant(true)
}

%fused_sum (r.0: f32[2000]) -> f32[] {
  %r.0 = f32[2000]{0} parameter(0)
  %r.zero = f32[] constant(0)
  ROOT %r.sum = f32[] reduce(%r.0, %r.zero), dimensions={0}, to_apply=%add_f
}

%branch_a (a.0: f32[2000]) -> f32[] {
  %a.0 = f32[2000]{0} parameter(0)
  ROOT %a.sum = f32[] fusion(%a.0), kind=kInput, calls=%fused_sum, metadata={op_name="jit(step)/head/reduce_sum"}
}

%branch_b (b.0: f32[2000]) -> f32[] {
  %b.0 = f32[2000]{0} parameter(0)
  ROOT %b.zero = f32[] constant(0)
}

%fused_row (d.0: f32[10,1000], d.1: s32[]) -> f32[1,1000] {
  %d.0 = f32[10,1000]{1,0} parameter(0)
  %d.1 = s32[] parameter(1)
  %d.zero = s32[] constant(0)
  ROOT %d.ds = f32[1,1000]{1,0} dynamic-slice(%d.0, %d.1, %d.zero), dynamic_slice_sizes={1,1000}
}

%fused_put (u.0: f32[10,1000], u.1: f32[1,1000], u.2: s32[]) -> f32[10,1000] {
  %u.0 = f32[10,1000]{1,0} parameter(0)
  %u.1 = f32[1,1000]{1,0} parameter(1)
  %u.2 = s32[] parameter(2)
  %u.zero = s32[] constant(0)
  ROOT %u.dus = f32[10,1000]{1,0} dynamic-update-slice(%u.0, %u.1, %u.2, %u.zero)
}

%fused_pick (g.0: f32[1000]) -> f32[10] {
  %g.0 = f32[1000]{0} parameter(0)
  %g.exp = f32[1000]{0} exponential(%g.0)
  ROOT %g.slice = f32[10]{0} slice(%g.exp), slice={[0:10]}
}

%fused_edge (h.0: f32[1000]) -> f32[] {
  %h.0 = f32[1000]{0} parameter(0)
  %h.exp = f32[1000]{0} exponential(%h.0)
  %h.slice = f32[10]{0} slice(%h.exp), slice={[0:10]}
  %h.zero = f32[] constant(0)
  ROOT %h.sum = f32[] reduce(%h.slice, %h.zero), dimensions={0}, to_apply=%add_f
}

%fused_dot (m.0: bf16[64,32], m.1: bf16[32,16]) -> f32[64,16] {
  %m.0 = bf16[64,32]{1,0} parameter(0)
  %m.1 = bf16[32,16]{1,0} parameter(1)
  ROOT %m.dot = f32[64,16]{1,0} dot(%m.0, %m.1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main (a: bf16[256,512], w: bf16[512,128], v0: f32[1000], x: f32[2000], k: s32[], rows: f32[10,1000], q: bf16[2,128,4,64], m.a: bf16[64,32], m.b: bf16[32,16]) -> f32[] {
  %a = bf16[256,512]{1,0} parameter(0)
  %w = bf16[512,128]{1,0} parameter(1)
  %gemm = (f32[256,128]{1,0}, s8[1024]{0}) custom-call(%a, %w), custom_call_target="__cublas$lt$matmul", backend_config={"gemm_backend_config":{"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"],"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]}}}
  %v0 = f32[1000]{0} parameter(2)
  %zero = s32[] constant(0)
  %init = (s32[], f32[1000]{0}) tuple(%zero, %v0)
  %loop = (s32[], f32[1000]{0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %x = f32[2000]{0} parameter(3)
  %k = s32[] parameter(4)
  %switch = f32[] conditional(%k, %x, %x), branch_computations={%branch_a, %branch_b}
  %rows = f32[10,1000]{1,0} parameter(5)
  %row = f32[1,1000]{1,0} fusion(%rows, %k), kind=kLoop, calls=%fused_row
  %put = f32[10,1000]{1,0} fusion(%rows, %row, %k), kind=kLoop, calls=%fused_put
  %q = bf16[2,128,4,64]{3,2,1,0} parameter(6)
  %att = (bf16[2,4,128,64]{3,2,1,0}, u8[0]{0}) custom-call(%q, %q, %q), custom_call_target="__cudnn$fmhaSoftmax", backend_config={"cudnn_fmha_backend_config": {"intermediate_tensor_shape": {"element_type": "BF16", "dimensions": ["2", "4", "128", "128"], "tuple_shapes": []}}}
  %attb = (bf16[2,4,128,64]{3,2,1,0}, u8[0]{0}) custom-call(%q, %q, %q), custom_call_target="__cudnn$fmhaSoftmaxBackward", backend_config={"cudnn_fmha_backend_config": {"intermediate_tensor_shape": {"element_type": "BF16", "dimensions": ["2", "4", "128", "128"], "tuple_shapes": []}}}
  %pick = f32[10]{0} fusion(%v0), kind=kLoop, calls=%fused_pick
  %edge = f32[] fusion(%v0), kind=kInput, calls=%fused_edge
  %m.a = bf16[64,32]{1,0} parameter(7)
  %m.b = bf16[32,16]{1,0} parameter(8)
  %small = f32[64,16]{1,0} fusion(%m.a, %m.b), kind=kCustom, calls=%fused_dot
  ROOT %out = f32[] copy(%switch)
}
"""

GEMM = ATTENTION = 2 * 256 * 128 * 512  # 2·M·N·K; the attention: 4·B·H·L·S·d, the same
LOOP = 3 * (4000 + 4000 + 4000)  # three trips of a 1000-float add
SWITCH = 8000 + 4  # the costlier branch: a sum over 2000 floats
ROW = 4000 + 4 + 4000  # a slice reads one row of ten, and its index
PUT = 4000 + 4 + 4000  # an in-place update moves the row, not the buffer
COPY = 8
BACKWARD = 5 * ATTENTION // 2  # five products of the forward's two
PICK = 40 + 40  # exp then a 10-float slice: a loop fusion evaluates only what it writes
EDGE = 40 + 4  # a sum of 10 sliced floats: elementwise ops then a slice read only the slice
DOT = 2 * 64 * 16 * 32  # a product fused by XLA (a Triton GEMM), 9,216 bytes


def test_costs_of_products_loops_switches_slices_and_updates():
  r = gpu_roofline.estimate(MODULE, peak_flops=1e9, bandwidth=1e9, scope={"/head/": "head"})
  assert r.flops == GEMM + ATTENTION + BACKWARD + DOT
  assert r.bytes == 524288 + LOOP + SWITCH + ROW + PUT + 2 * 524288 + PICK + EDGE + 9216 + COPY
  assert r.seconds * 1e9 == pytest.approx(
      GEMM + LOOP + SWITCH + ROW + PUT + ATTENTION + BACKWARD + PICK + EDGE + DOT + COPY)
  by = {key: round(v * 1e9) for key, v in r.by.items()}
  assert by == {("rest", "gemm"): GEMM + DOT, ("rest", "attention"): ATTENTION + BACKWARD,
                ("head", "memory"): SWITCH,
                ("rest", "memory"): LOOP + ROW + PUT + PICK + EDGE + COPY}
  cheap = gpu_roofline.estimate(MODULE, peak_flops=1e9, bandwidth=1e9, branch=1)
  assert (r.seconds - cheap.seconds) * 1e9 == pytest.approx(SWITCH)


def test_a_module_without_entry_is_refused():
  with pytest.raises(ValueError, match="no ENTRY"):
    gpu_roofline.estimate("HloModule empty\n")
