"""Property-based tests (hypothesis) of the quantizer and CWR* consolidation (METHOD §2-§3).

The example-based tests in ``quantizers_test.py`` and ``head_test.py`` pin hand-computed
numbers; these check invariants over random inputs: float32 arrays with magnitudes up to
1e3, ranges, bits in [2, 16], 1-8 features and 1-10 classes. The consolidation is compared
with ``_consolidate_reference``, an independent float64 numpy transcription of METHOD §2.

Examples are derandomized (no example database), so a run is reproducible; ``CI=true``
runs fewer of them to keep the file fast.
"""

import larq_cwr  # noqa: F401  isort: skip  (Keras 2 before TensorFlow loads)
import os

import numpy as np
import tensorflow as tf
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from larq_cwr.head import consolidate_kernel, reset_kernel
from larq_cwr.quantizers import counter_uniform, fake_quantize, snap_to_grid

settings.register_profile(
    "larq_cwr",
    deadline=None,  # eager TensorFlow calls: the first ones of a process are slow
    derandomize=True,  # the same examples on every run and machine
    database=None,  # no example database: no replay of old failures
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "larq_cwr-ci", parent=settings.get_profile("larq_cwr"), max_examples=20
)
# Applied per test (not `settings.load_profile`, which would change other modules' tests).
PROFILE = settings.get_profile("larq_cwr-ci" if os.environ.get("CI") else "larq_cwr")

# float32 unit roundoff: one correctly rounded float32 operation has relative error <= U.
U = 2.0**-24
# snap_to_grid floors the span of the range at 1e-30 (``quantizers._MIN_SPAN``); below it
# the grid is not the one METHOD §3 describes, so the range properties need a wider span.
MIN_SPAN = np.float32(1e-30)
MAGNITUDE = 1e3

FLOATS = st.floats(-MAGNITUDE, MAGNITUDE, width=32)
# Range ends are normal floats: TensorFlow flushes subnormals to zero on CPU, so with
# a subnormal span fake_quantize sees ``high > low`` as false and returns x unchanged.
RANGE_ENDS = st.floats(-MAGNITUDE, MAGNITUDE, width=32, allow_subnormal=False)
BITS = st.integers(2, 16)


# -- quantizer --------------------------------------------------------------------------


def _widened(low, high):
    """The zero-exact grid's widened range [min(low, 0), max(high, 0)] and its span, in
    float32 exactly as METHOD §3 (and snap_to_grid) compute them."""
    low, high = np.minimum(np.float32(low), np.float32(0)), np.maximum(np.float32(high), 0)
    span = np.float32(high - low)
    return low, high, span


def _step(span, bits):
    """step = span / (2^bits - 1) in float32, the span floored at MIN_SPAN as there."""
    return np.float32(np.maximum(span, MIN_SPAN) / np.float32(2.0**bits - 1.0))


@st.composite
def quantizer_cases(draw, min_span=None):
    """(x, bits, low, high): x mixes free values with zeros, grid points and midpoints
    between grid points (rounding ties, or the nearest float32 to them). With
    ``min_span``, the widened range spans at least that much."""
    bits = draw(BITS)
    low, high = sorted([draw(RANGE_ENDS), draw(RANGE_ENDS)])
    low, high = np.float32(low), np.float32(high)
    span = _widened(low, high)[2]
    if min_span is not None:
        assume(span >= min_span)
    step = float(_step(span, bits))
    levels = 2**bits - 1
    free = draw(hnp.arrays(np.float32, st.integers(1, 32), elements=FLOATS))
    # Levels counted from zero: -z .. levels - z with z <= levels; a little beyond too.
    ks = draw(st.lists(st.integers(-levels - 2, levels + 2), max_size=8))
    halves = draw(st.lists(st.booleans(), min_size=len(ks), max_size=len(ks)))
    on_grid = np.array([(k + 0.5 * h) * step for k, h in zip(ks, halves)], np.float64)
    zeros = np.zeros(draw(st.integers(0, 3)), np.float32)
    x = np.concatenate([free, on_grid.astype(np.float32), zeros])
    x = draw(st.permutations(list(x)))
    return np.array(x, np.float32), bits, low, high


def _noise(shape, seed):
    return counter_uniform(list(shape), seed=seed, counter=0)


def _snap(x, bits, low, high, **kwargs):
    return snap_to_grid(tf.constant(x), bits, low=low, high=high, **kwargs).numpy()


@PROFILE
@given(quantizer_cases(), st.sampled_from([None, 0, 1, 2]))
def test_zero_exact_grid_keeps_zero_exactly(case, seed):
    x, bits, low, high = case
    x = np.concatenate([x, np.float32([0.0, -0.0])])
    noise = None if seed is None else _noise(x.shape, seed)
    q = _snap(x, bits, low, high, noise=noise)
    assert np.all(q[x == 0] == 0)
    # fake_quantize on the tensor's own range, and on the static one.
    assert np.all(fake_quantize(tf.constant(x), bits).numpy()[x == 0] == 0)
    static = fake_quantize(tf.constant(x), bits, min_value=low, max_value=high).numpy()
    assert np.all(static[x == 0] == 0)


@PROFILE
@given(quantizer_cases(), st.sampled_from([None, 0, 1]))
def test_zero_exact_outputs_are_integer_steps_within_the_range(case, seed):
    x, bits, low, high = case
    noise = None if seed is None else _noise(x.shape, seed)
    q = _snap(x, bits, low, high, noise=noise).astype(np.float64)
    widened_low, widened_high, span = _widened(low, high)
    step = float(_step(span, bits))
    k = q / step
    integer = np.round(k)
    # q = fl(K * step) for an integer K: the float32 product is off by <= U * |q|, so
    # q / step is off K by <= U * |K| (computed in float64 from the float32 step, exact
    # to 2^-53). Twice that bound; a grid shifted by a fraction of a step (the paper
    # grid) is off by far more except when the fraction is tiny.
    np.testing.assert_array_less(np.abs(k - integer), 2 * U * np.abs(integer) + 1e-12)
    assert np.unique(integer).size <= 2**bits
    # Levels -z .. 2^bits - 1 - z, with 0 <= z <= 2^bits - 1 the zero point.
    assert integer.max() - integer.min() <= 2**bits - 1
    assert np.all(np.abs(integer) <= 2**bits - 1)
    if span >= MIN_SPAN:
        # The grid is the widened range nudged to put 0 on a level: each end moves by at
        # most half a step. Slack: the zero point's float32 division is off by
        # U * |low| / step steps, and q by U * |q| (both <= U * (span + step)); 4x.
        slack = 4 * U * (float(span) + step)
        assert q.min() >= widened_low - step / 2 - slack
        assert q.max() <= widened_high + step / 2 + slack


@PROFILE
@given(quantizer_cases(), st.sampled_from(["zero_exact", "paper"]))
def test_quantizing_twice_changes_nothing(case, grid):
    x, bits, low, high = case
    # Exact for the zero-exact grid: re-dividing fl(K * step) by step is off K by at most
    # U * |K| < 0.01 (K < 2^16), which rounding removes. No such bound for the paper
    # grid (q - low loses steps when |low| >> span), yet it held in 2,000 random examples
    # and a stress run of narrow ranges far from 0.
    q = _snap(x, bits, low, high, grid=grid)
    np.testing.assert_array_equal(_snap(q, bits, low, high, grid=grid), q)
    static = fake_quantize(tf.constant(x), bits, min_value=low, max_value=high, grid=grid)
    again = fake_quantize(static, bits, min_value=low, max_value=high, grid=grid)
    np.testing.assert_array_equal(again.numpy(), static.numpy())


@PROFILE
@given(quantizer_cases(min_span=MIN_SPAN))
@example((np.float32([-119 * 10 / 255]), 8, np.float32(-5), np.float32(5)))
def test_stochastic_rounding_keeps_grid_values(case):
    """A grid value stays put under stochastic rounding (here a zero noise draw): a level
    recomputed as fl(q / step) may fall just below its integer, e.g. range [-5, 5],
    8 bits: q = -4.666667 (K = -119) once gave -4.7058825."""
    x, bits, low, high = case
    q = _snap(x, bits, low, high)
    np.testing.assert_array_equal(_snap(q, bits, low, high, noise=tf.zeros(q.shape)), q)


@PROFILE
@given(quantizer_cases(min_span=MIN_SPAN), st.sampled_from([None, 0, 1]))
def test_zero_exact_error_is_at_most_half_a_step(case, seed):
    """Nearest: |q(x) - clip(x)| <= step / 2; stochastic: < step (clip to the widened
    range, whose nudged ends are within half a step of it)."""
    x, bits, low, high = case
    noise = None if seed is None else _noise(x.shape, seed)
    q = _snap(x, bits, low, high, noise=noise).astype(np.float64)
    widened_low, widened_high, span = _widened(low, high)
    step = float(_step(span, bits))
    clipped = np.clip(x.astype(np.float64), widened_low, widened_high)
    # Slack: x / step in float32 is off by U * |x| / step steps, the product K * step
    # by U * |q|, the zero point by U * |low| / step steps: each <= U * (span + step).
    slack = 4 * U * (float(span) + step)
    bound = step / 2 if noise is None else step
    np.testing.assert_array_less(np.abs(q - clipped), bound + slack)


@PROFILE
@given(BITS, st.integers(-30, 10), st.data())
def test_exact_ties_round_to_the_even_level(bits, exponent, data):
    """METHOD §3 rounds half to even. With a power-of-two step the range ends, the step,
    the midpoints (K + 0.5) * step and x / step are all exact in float32: true ties."""
    levels = 2**bits - 1
    step = 2.0**exponent
    zero_point = data.draw(st.integers(0, levels))
    low, high = np.float32(-zero_point * step), np.float32((levels - zero_point) * step)
    k = np.array(
        data.draw(st.lists(st.integers(-zero_point, levels - zero_point - 1), min_size=1)),
        np.int64,
    )
    x = ((k + 0.5) * step).astype(np.float32)
    q = _snap(x, bits, low, high)
    np.testing.assert_array_equal(q, np.where(k % 2 == 0, k, k + 1) * step)


@PROFILE
@given(quantizer_cases(), st.sampled_from(["zero_exact", "paper"]))
def test_nearest_rounding_is_monotone(case, grid):
    x, bits, low, high = case
    # Every float32 operation used (clip, subtract, divide or multiply by a positive
    # scale, round) is monotone, so the composition is: exact, no tolerance.
    q = _snap(np.sort(x), bits, low, high, grid=grid)
    assert np.all(np.diff(q.astype(np.float64)) >= 0)


@PROFILE
@given(quantizer_cases())
def test_zero_exact_grid_equals_tensorflow_fake_quant_but_at_ties(case):
    """Independent oracle (METHOD §3): fake_quant_with_min_max_vars for min <= 0 <= max."""
    x, bits, low, high = case
    assume(low <= 0 <= high and high - low >= 1e-20)  # TF's inverse step stays finite
    ours = _snap(x, bits, low, high).astype(np.float64)
    theirs = tf.quantization.fake_quant_with_min_max_vars(
        tf.constant(x), low, high, num_bits=bits
    ).numpy()
    theirs = theirs.astype(np.float64)
    span = float(_widened(low, high)[2])
    step = float(_step(span, bits))
    # TensorFlow computes the same level as (x - nudged_min) * (1 / step) and
    # K * step + nudged_min: rounding errors of a few U * span, not steps.
    atol = 4 * U * (span + step)
    same = np.abs(ours - theirs) <= atol
    # Elsewhere TensorFlow rounded a tie up where we round half to even, or float32
    # error put x / step on the other side of a tie: exactly one step apart, at x / step
    # within (the same few U * span) of a half-integer.
    grid_units = np.clip(x.astype(np.float64), low, high) / step
    tie = np.abs(grid_units - np.floor(grid_units) - 0.5) <= atol / step
    assert np.all(tie[~same]), (x[~same], ours[~same], theirs[~same])
    np.testing.assert_allclose(np.abs(ours - theirs)[~same], step, rtol=0, atol=atol)


@PROFILE
@given(quantizer_cases(), st.sampled_from(["zero_exact", "paper"]))
def test_fake_quantize_is_snap_to_grid_with_identity_gradient(case, grid):
    x, bits, low, high = case
    inputs = tf.constant(x)
    for m, big_m in ((low, high), (high, high)):  # an empty range returns x unchanged
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            q = fake_quantize(inputs, bits, min_value=m, max_value=big_m, grid=grid)
            loss = tf.reduce_sum(q * tf.range(1.0, x.size + 1.0))
        expected = x if m == big_m else _snap(x, bits, m, big_m, grid=grid)
        np.testing.assert_array_equal(q.numpy(), expected)
        # Straight-through: d loss / d x = d loss / d q.
        np.testing.assert_array_equal(
            tape.gradient(loss, inputs).numpy(), range(1, x.size + 1)
        )


# -- counter-based noise ---------------------------------------------------------------

INT32 = st.integers(-(2**31), 2**31 - 1)


def _wrap32(value):
    return (value + 2**31) % 2**32 - 2**31


@PROFILE
@given(INT32, INT32, st.integers(1, 64), st.integers(0, 64))
def test_counter_uniform_is_one_stream(seed, counter, size, skipped):
    """Draws in [0, 1) on 24 bits; (counter c, n values) is the tail of (c - k, n + k),
    the counter wrapping modulo 2^32 like an int32."""
    tail = counter_uniform([size], seed=seed, counter=counter).numpy()
    whole = counter_uniform(
        [size + skipped], seed=seed, counter=_wrap32(counter - skipped)
    ).numpy()
    assert tail.dtype == np.float32
    assert np.all((tail >= 0) & (tail < 1))
    np.testing.assert_array_equal(tail * 2**24, np.round(tail * 2**24))
    np.testing.assert_array_equal(whole[skipped:], tail)
    square = counter_uniform([2, size], seed=seed, counter=counter).numpy()
    np.testing.assert_array_equal(square.reshape(-1)[:size], tail)


@PROFILE
@given(INT32, INT32, INT32)
def test_counter_uniform_seeds_give_different_streams(seed, other, counter):
    assume(seed != other)
    # 8 draws of 24 bits: equal streams by chance with probability 2^-192.
    a = counter_uniform([8], seed=seed, counter=counter).numpy()
    b = counter_uniform([8], seed=other, counter=counter).numpy()
    assert np.any(a != b)


# -- CWR* consolidation ----------------------------------------------------------------


def _consolidate_reference(kernel, consolidated, past_counts, class_counts):
    """METHOD §2 step 3 in float64, one class at a time."""
    kernel = kernel.astype(np.float64)
    new_consolidated = consolidated.astype(np.float64)
    present = np.flatnonzero(class_counts > 0)
    average = kernel[:, present].mean()
    for j in present:
        new = kernel[:, j] - average
        if past_counts[j] > 0:
            w = np.sqrt(past_counts[j] / class_counts[j])
            new_consolidated[:, j] = (new_consolidated[:, j] * w + new) / (w + 1)
        else:
            new_consolidated[:, j] = new
    return new_consolidated, past_counts + class_counts


def _consolidate(kernel, consolidated, past_counts, class_counts, **options):
    new, past = consolidate_kernel(
        tf.constant(kernel),
        tf.constant(consolidated),
        past_counts=tf.constant(past_counts),
        class_counts=tf.constant(class_counts),
        **options,
    )
    assert new.dtype == tf.float32 and past.dtype == tf.int64
    return new.numpy(), past.numpy()


def _atol(*arrays):
    """Tolerance of the float32 consolidation against the float64 reference.

    The mean over up to 8 x 10 = 80 entries accumulates at most 80 rounding errors of
    U * max|entry| (about 4.8e-6 of the largest entry); the subtraction, products and
    division add a few U more, as does the counts' cast to float32 (relative U). So
    1e-5 of the largest magnitude; dropping the mean shift or the square root errs by
    whole entries.
    """
    return 1e-5 * max(float(np.abs(a).max()) for a in arrays) + 1e-30


COUNTS = st.one_of(st.just(0), st.integers(1, 50), st.integers(1, 2**40))


@st.composite
def cwr_cases(draw, elements=FLOATS, first=False):
    """(kernel, consolidated, past_counts, class_counts) with at least one class present."""
    features, classes = draw(st.integers(1, 8)), draw(st.integers(1, 10))
    kernel = draw(hnp.arrays(np.float32, (features, classes), elements=elements))
    consolidated = draw(hnp.arrays(np.float32, (features, classes), elements=elements))
    past = np.array(draw(st.lists(COUNTS, min_size=classes, max_size=classes)), np.int64)
    current = np.array(draw(st.lists(COUNTS, min_size=classes, max_size=classes)), np.int64)
    if first:
        past[:] = 0
    if not np.any(current > 0):
        current[draw(st.integers(0, classes - 1))] = draw(st.integers(1, 2**40))
    return kernel, consolidated, past, current


@PROFILE
@given(cwr_cases())
def test_consolidate_kernel_matches_numpy_reference(case):
    kernel, consolidated, past, current = case
    new, new_past = _consolidate(*case)
    expected, expected_past = _consolidate_reference(*case)
    np.testing.assert_allclose(new, expected, rtol=0, atol=_atol(kernel, consolidated))
    np.testing.assert_array_equal(new_past, expected_past)


@PROFILE
@given(cwr_cases())
def test_latest_consolidation_treats_seen_classes_as_new(case):
    # "latest" is the weighted rule with no past weight (the reference with past 0),
    # while the counts still accumulate the true past.
    kernel, consolidated, past, current = case
    new, new_past = _consolidate(*case, consolidation="latest")
    expected, _ = _consolidate_reference(kernel, consolidated, np.zeros_like(past), current)
    np.testing.assert_allclose(new, expected, rtol=0, atol=_atol(kernel, consolidated))
    np.testing.assert_array_equal(new_past, past + current)


@PROFILE
@given(cwr_cases(), st.data())
def test_consolidate_kernel_commutes_with_class_permutation(case, data):
    kernel, consolidated, past, current = case
    order = np.array(data.draw(st.permutations(range(kernel.shape[1]))), np.int64)
    new, new_past = _consolidate(*case)
    permuted, permuted_past = _consolidate(
        kernel[:, order], consolidated[:, order], past[order], current[order]
    )
    # Not bitwise: the mean sums the present entries in another order. Each side is
    # within _atol of the exact value, so 2 * _atol apart at most.
    atol = 2 * _atol(kernel, consolidated)
    np.testing.assert_allclose(permuted, new[:, order], rtol=0, atol=atol)
    np.testing.assert_array_equal(permuted_past, new_past[order])


@PROFILE
@given(cwr_cases())
def test_absent_classes_keep_their_column_and_counts(case):
    kernel, consolidated, past, current = case
    new, new_past = _consolidate(*case)
    absent = current == 0
    np.testing.assert_array_equal(new[:, absent], consolidated[:, absent])  # bitwise
    np.testing.assert_array_equal(new_past[absent], past[absent])
    np.testing.assert_array_equal(new_past, past + current)  # exact int64


@PROFILE
@given(cwr_cases(first=True), st.data())
def test_first_experience_gives_kernel_minus_mean(case, data):
    """Past counts all 0: cw = tw - avg for the present classes, whatever cw held."""
    kernel, consolidated, past, current = case
    new, new_past = _consolidate(*case)
    present = current > 0
    average = kernel[:, present].astype(np.float64).mean()
    atol = _atol(kernel)
    np.testing.assert_allclose(
        new[:, present], kernel[:, present] - average, rtol=0, atol=atol
    )
    # The new columns are centred: their mean is 0 (up to the same float32 error).
    assert abs(new[:, present].astype(np.float64).mean()) <= atol
    # A stale consolidated column of a present class is multiplied by w = 0: bitwise no
    # influence.
    other = data.draw(hnp.arrays(np.float32, consolidated.shape, elements=FLOATS))
    again = _consolidate(kernel, other, past, current)[0]
    np.testing.assert_array_equal(again[:, present], new[:, present])
    np.testing.assert_array_equal(new_past, current)


@PROFILE
@given(cwr_cases(), FLOATS)
def test_unchanged_weights_are_a_fixed_point(case, shift):
    """If tw[j] - avg == cw[j] for a class seen before, cw[j] is unchanged.

    The exact statement: the update is cw[j] += (tw[j] - avg - cw[j]) / (w + 1), so cw[j]
    is a fixed point iff tw[j] equals cw[j] plus the mean avg of the present columns.
    Build such a kernel: tw = cw + shift on the seen present classes, and avg == shift,
    which needs the present columns' excess over shift to sum to 0: the new classes'
    columns absorb it, or with no new class the seen classes' cw is centred.
    """
    kernel, consolidated, past, current = case
    present = current > 0
    seen = present & (past > 0)
    assume(seen.any())
    new_classes = present & ~seen
    kernel = kernel.astype(np.float64)
    consolidated = consolidated.astype(np.float64)
    if new_classes.any():
        excess = consolidated[:, seen].sum() + (kernel[:, new_classes] - shift).sum()
        kernel[:, new_classes] -= excess / kernel[:, new_classes].size
    else:
        consolidated[:, seen] -= consolidated[:, seen].mean()
    kernel[:, seen] = consolidated[:, seen] + shift
    kernel, consolidated = kernel.astype(np.float32), consolidated.astype(np.float32)
    new, _ = _consolidate(kernel, consolidated, past, current)
    atol = _atol(kernel, consolidated)
    np.testing.assert_allclose(new[:, seen], consolidated[:, seen], rtol=0, atol=atol)
    # and the new classes get tw - avg = tw - shift.
    np.testing.assert_allclose(
        new[:, new_classes], kernel[:, new_classes] - np.float64(shift), rtol=0, atol=atol
    )


@PROFILE
@given(cwr_cases(first=True), st.lists(st.integers(1, 2**40), min_size=10, max_size=10))
def test_an_experience_that_trains_nothing_changes_nothing(case, counts):
    """Consolidate a first experience, reset for one with the same classes, shift the
    reset kernel by a constant (softmax does not see it) and consolidate: cw is kept."""
    kernel, consolidated, past, current = case
    present = current > 0
    first, past = _consolidate(kernel, consolidated, past, current)
    current = np.where(present, np.array(counts[: present.size], np.int64), 0)
    reset = reset_kernel(
        tf.constant(first),
        past_counts=tf.constant(past),
        class_counts=tf.constant(current),
    )
    shift = np.float32(kernel.flat[0])
    trained = np.where(present, reset.numpy() + shift, 0).astype(np.float32)
    second, _ = _consolidate(trained, first, past, current)
    # cw of the present classes has mean 0 only up to _atol(kernel) (the first
    # consolidation), which moves them by as much at most; plus the second's own error.
    atol = _atol(kernel) + _atol(trained, first)
    np.testing.assert_allclose(second, first, rtol=0, atol=atol)


@PROFILE
@given(cwr_cases())
def test_reset_restores_present_seen_classes_and_zeroes_the_rest(case):
    _, consolidated, past, current = case
    reset = reset_kernel(
        tf.constant(consolidated),
        past_counts=tf.constant(past),
        class_counts=tf.constant(current),
    )
    assert reset.dtype == tf.float32
    reset = reset.numpy()
    restore = (current > 0) & (past > 0)
    np.testing.assert_array_equal(reset[:, restore], consolidated[:, restore])  # bitwise
    assert np.all(reset[:, ~restore] == 0)


# Multiples of 2^-10 up to 2^10: sums, differences and power-of-two scalings of them
# stay clear of float32's subnormal range and overflow, so scaling by 2^e is exact.
DYADIC = st.integers(-(2**20), 2**20).map(lambda k: k / 1024.0)


@PROFILE
@given(cwr_cases(elements=DYADIC), st.integers(-8, 8))
def test_scaling_by_a_power_of_two_scales_the_result_exactly(case, exponent):
    kernel, consolidated, past, current = case
    c = np.float32(2.0**exponent)
    new, new_past = _consolidate(*case)
    scaled, scaled_past = _consolidate(kernel * c, consolidated * c, past, current)
    # Every float32 operation commutes exactly with a power-of-two scaling (no
    # subnormals, no overflow here), and the reduction order is the same.
    np.testing.assert_array_equal(scaled, new * c)
    np.testing.assert_array_equal(scaled_past, new_past)


@PROFILE
@given(cwr_cases(), st.floats(1e-3, 1e3))
def test_scaling_by_a_positive_constant_scales_the_result(case, c):
    kernel, consolidated, past, current = case
    c = np.float32(c)
    new, _ = _consolidate(*case)
    scaled_kernel, scaled_consolidated = kernel * c, consolidated * c
    scaled, _ = _consolidate(scaled_kernel, scaled_consolidated, past, current)
    # Each side within _atol of its exact value (the scaled inputs are rounded too,
    # by U of each entry, inside the same budget).
    atol = _atol(scaled_kernel, scaled_consolidated) + c * _atol(kernel, consolidated)
    np.testing.assert_allclose(scaled, new.astype(np.float64) * c, rtol=0, atol=atol)
