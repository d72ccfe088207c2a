"""Recompute by hand, from a results folder, what the harness reported for issue 13's GPU run:
one case's confidence, one category's pass rate and Wilson interval, one McNemar test, and the
AUROC of mean NLL (Mann-Whitney). Usage: python3 hand_check_issue13.py RESULTS_DIR"""
import json, math, sys

d = sys.argv[1]
def load(m):
    return [json.loads(l) for l in open(f"{d}/results-{m}.jsonl")]
nat = load("qwen2.5-coder-0.5b-instruct-cuda"); i4 = load("qwen2.5-coder-0.5b-instruct-int4-cuda")
s = json.load(open(f"{d}/summary-qwen2.5-coder-0.5b-instruct-cuda.json"))["summary"]
cases = [o for o in nat if o["error"] is None]; n = len(cases)
k = sum(all(sm["passed"] for sm in o["samples"]) for o in cases)
z = 1.959963984540054; p = k / n
c = (p + z * z / (2 * n)) / (1 + z * z / n); h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
print(f"category humaneval by hand: {k}/{n} = {100*p:.1f}%, Wilson 95% [{100*(c-h):.1f}, {100*(c+h):.1f}]")
cat = s["categories"]["humaneval"]
print(f"  harness: {cat['passed']}/{cat['cases']} = {100*cat['pass_rate']:.1f}%, [{100*cat['pass_rate_ci']['low']:.1f}, {100*cat['pass_rate_ci']['high']:.1f}]")
passed = lambda rs: {o["key"]: all(sm["passed"] for sm in o["samples"]) for o in rs}
pn, pi = passed(nat), passed(i4)
b = sum(1 for key in pn if pn[key] and not pi[key]); cc = sum(1 for key in pn if pi[key] and not pn[key])
pv = min(1.0, 2 * sum(math.comb(b + cc, i) for i in range(min(b, cc) + 1)) / 2 ** (b + cc))
print(f"McNemar native vs int4 by hand: b={b}, c={cc}, exact two-sided p = {pv:.3f}")
o = [o for o in nat if o["key"] == "humaneval/HumanEval_0"][0]; sm = o["samples"][0]
lp = [max(l, -100) for l in sm["tokens"]["logprobs"] if l == l]; probs = [math.exp(l) for l in lp]
print(f"case {o['key']} by hand: passed={sm['passed']}, {len(lp)} tokens, mean NLL {-sum(lp)/len(lp):.6f}, sum NLL {-sum(lp):.4f}, min prob {min(probs):.6f}, mean prob {sum(probs)/len(probs):.6f}")
cf = sm["confidence"]
print(f"  harness: {cf['tokens']} tokens, mean NLL {cf['mean_nll']:.6f}, sum NLL {cf['sum_nll']:.4f}, min prob {cf['min_prob']:.6f}, mean prob {cf['mean_prob']:.6f}")
pairs = [(x["samples"][0]["confidence"]["mean_nll"], not x["samples"][0]["passed"]) for x in cases if x["samples"][0].get("confidence")]
pos = [a for a, f in pairs if f]; neg = [a for a, f in pairs if not f]
au = sum((1 if a > b2 else 0.5 if a == b2 else 0) for a in pos for b2 in neg) / (len(pos) * len(neg))
print(f"AUROC mean NLL by hand (Mann-Whitney, {len(pos)} failing x {len(neg)} passing): {au:.4f}; harness: "
      + str([x["auroc"] for x in s["uncertainty"]["scores"] if x["score"] == "mean_nll"][0]))
