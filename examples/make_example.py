"""Generate ``examples/news.jsonl``: a small news-topic corpus with LLM-style label noise.

Each headline mixes a main topic with a detail from another; the simulated LLM follows the
detail on about a third of the rows (errors that follow the text), and refuses on a few.
``gold_label`` is the main topic, for ``sidyp-prod evaluate`` only. Run:
``python examples/make_example.py > examples/news.jsonl``.
"""

from __future__ import annotations

import json
import random

SUBJECTS = {
    "sports": ["The striker", "The home team", "The tennis champion", "The league's top scorer",
               "The veteran goalkeeper", "The marathon runner", "The basketball coach"],
    "business": ["The bank", "Shares of the retailer", "The chief executive", "The central bank",
                 "The airline's investors", "The startup", "Oil prices"],
    "science": ["The research team", "The space agency", "Astronomers", "The biologists",
                "A new telescope", "The physics lab", "Climate scientists"],
    "politics": ["The senator", "The prime minister", "Parliament", "The governor",
                 "The opposition party", "Voters", "The foreign minister"],
}
ACTIONS = {
    "sports": ["scored twice in the final minutes", "won the championship after extra time",
               "signed a three-year contract with the club", "was injured during training",
               "broke the national record", "lost the semi-final on penalties"],
    "business": ["reported record quarterly profits", "cut its revenue forecast",
                 "announced a merger worth two billion dollars", "raised interest rates again",
                 "laid off hundreds of employees", "saw its stock fall sharply"],
    "science": ["discovered a planet orbiting a nearby star", "published results on gene editing",
                "measured a new particle in the collider", "mapped the ocean floor",
                "observed a rare solar eclipse", "sequenced the genome of an ancient plant"],
    "politics": ["won the election by a narrow margin", "proposed a new tax bill",
                 "resigned after the scandal", "signed a trade agreement",
                 "called for a vote of no confidence", "vetoed the budget proposal"],
}
DETAILS = {
    "sports": ["before the big match", "as fans filled the stadium", "during the world cup"],
    "business": ["as markets tumbled", "despite investor worries", "amid the stock market rally"],
    "science": ["using data from a satellite", "according to a new study", "in the laboratory"],
    "politics": ["ahead of the election", "after the parliamentary debate", "under the new law"],
}
NEIGHBOUR = {"sports": "business", "business": "politics", "science": "business",
             "politics": "sports"}


def main(n: int = 400, noise: float = 0.33, refused: float = 0.02, seed: int = 7) -> None:
    rng = random.Random(seed)
    topics = sorted(SUBJECTS)
    for i in range(n):
        gold = topics[i % len(topics)]
        other = NEIGHBOUR[gold] if rng.random() < 0.7 else rng.choice(topics)
        text = f"{rng.choice(SUBJECTS[gold])} {rng.choice(ACTIONS[gold])} "
        text += f"{rng.choice(DETAILS[other])}."
        label = other if other != gold and rng.random() < noise / 0.8 else gold
        if rng.random() < refused:
            label = None
        row = {"id": f"news-{i:04d}", "text": text, "label": label, "gold_label": gold}
        print(json.dumps(row))


if __name__ == "__main__":
    main()
