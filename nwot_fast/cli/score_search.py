"""The ``search`` and ``score`` commands: random search, and scores of given architectures."""

from __future__ import annotations

from ..args import N_SAMPLES, RUNS
from ..errors import EXIT_OK
from .common import (ARCH_EXAMPLE, EXIT_CODES_HELP, PROG, add_output_options, add_score_options, check_device,
                     config_from, format_score, input_path, parse_arch_argument, print_json, progress_bar, text_table)

SEARCH_EPILOG = f"""\
examples:
  {PROG} search --n-samples 10 --runs 5
  {PROG} search --n-samples 100 --runs 10 --data ../shared/data/cifar10_sample.npz \\
      --accuracies ../shared/data/nb201_accuracies.csv --json > search.json
  {PROG} search --method hook_logdet --batch-size 128 --device auto

Each run draws N architectures uniformly (with replacement), scores them and keeps the best
(NaN scores are never chosen). With --accuracies the chosen architectures' NB201 val/test
accuracies are shown (CIFAR-10, CIFAR-100, ImageNet16-120).

{EXIT_CODES_HELP}"""

SCORE_EPILOG = f"""\
examples:
  {PROG} score 0 1 2
  {PROG} score {ARCH_EXAMPLE}
  {PROG} score 1462 --method hook_logdet --data ../shared/data/cifar10_sample.npz --json

ARCH is a benchmark index (0..15624) or an official arch string (quote it: it contains '|').
A given configuration gives the same score for an index as 'scan' does (the batch and the
weights depend only on the configuration and the index).

{EXIT_CODES_HELP}"""


def cmd_search(args) -> int:
    """``nwot-fast search``: random search, the best architecture of each run."""
    from ..random_search import search

    config = config_from(args)  # validates names and sizes before anything is loaded
    check_device(args)
    bar = progress_bar(args, args.n_samples * args.runs if args.n_samples > 0 and args.runs > 0 else 0, "searching")
    try:
        result = search(n_samples=args.n_samples, runs=args.runs, accuracies=args.accuracies, config=config,
                        progress=bar)
    finally:
        bar.close()
    if args.json:
        print_json(result.to_dict())
    else:
        print(result.format_table())
    return EXIT_OK


def cmd_score(args) -> int:
    """``nwot-fast score``: the scores of the given architectures."""
    from ..scorer import Scorer

    targets = [parse_arch_argument(a) for a in args.archs]
    config = config_from(args)
    check_device(args)
    scorer = Scorer(config)
    results = []
    with progress_bar(args, len(targets), "scoring") as bar:
        for n, result in enumerate(scorer.score_many(index for index, _ in targets), start=1):
            results.append(result)
            bar(n)
    data = scorer.describe_data()
    if args.json:
        print_json(
            {
                "data": data,
                "config": scorer.config.identity(),
                "config_hash": config.config_hash(),
                "engine": config.engine,
                "device": config.device,
                "results": [r.to_dict() for r in results],
            }
        )
        return EXIT_OK
    print(f"inputs: {data}")
    print(f"score: {scorer.config.method}, engine {config.engine}, device {config.device}")
    rows = [[str(r.index), format_score(r.score), f"{r.seconds:.3f}", str(r.arch)] for r in results]
    print(text_table(["index", "score", "seconds", "arch"], rows))
    return EXIT_OK


def add_search_command(add) -> None:
    """Registers ``search`` through ``add(name, help, handler, epilog)`` (see build_parser)."""
    p = add("search", "random search: draw N architectures per run, keep the best score", cmd_search, SEARCH_EPILOG)
    p.add_argument("-n", "--n-samples", type=N_SAMPLES.parse, default=10, metavar="N",
                   help=f"architectures per run, 1..{N_SAMPLES.high} (default: 10)")
    p.add_argument("-r", "--runs", type=RUNS.parse, default=1, metavar="R",
                   help=f"independent runs, 1..{RUNS.high} (default: 1)")
    p.add_argument("--accuracies", metavar="PATH", type=input_path,
                   help="NB201 accuracies: the official .pth or a CSV like nb201_accuracies.csv")
    add_score_options(p)
    add_output_options(p)


def add_score_command(add) -> None:
    """Registers ``score`` through ``add(name, help, handler, epilog)`` (see build_parser)."""
    p = add("score", "score architectures given by benchmark index or arch string", cmd_score, SCORE_EPILOG)
    p.add_argument("archs", nargs="+", metavar="ARCH", help="benchmark index (0..15624) or official arch string")
    add_score_options(p)
    add_output_options(p)
