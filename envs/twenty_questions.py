"""TwentyQuestions for :class:`envs.games.TextArenaEnv`: textarena's game, litellm game master.

``TextArenaEnv(game="TwentyQuestions-v0", gamemaster="<litellm model>")`` plays it under the
same contract as the other games. The secret word comes from textarena's bundled word list
(offline), drawn with the game seed. A reply without ``[...]`` (or with a ``?``) is a question,
which the game master, ``litellm.completion(model=gamemaster)``, answers with Yes / No / I don't
know; a reply with ``[word]`` is the final guess: right wins (reward 1), wrong loses (reward 0).
``max_turns`` (default 21: twenty questions and a guess) truncates. Nothing here is ever invalid.

API keys come only from the environment, as litellm reads them; none is passed here. A game
master call that fails raises: a broken judge must not look like a lost game.
"""

from __future__ import annotations

import os
import re

from textarena.envs.TwentyQuestions.env import (
    TwentyQuestionsEnv as _TextArenaTwentyQuestions,
)

SYSTEM_PROMPT = ("You are the game master of 20 Questions. Answer each question truthfully about the secret word "
                 "with exactly one of: Yes, No, I don't know.")


def ask_gamemaster(model: str, prompt: str, completion_kwargs: dict) -> str:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # else litellm fetches its price map at import
    import litellm  # here, not at the top: it takes seconds to import and only the game master needs it

    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
    response = litellm.completion(model=model, messages=messages, **completion_kwargs)
    return response.choices[0].message.content or ""


class TwentyQuestionsGame(_TextArenaTwentyQuestions):
    """textarena's TwentyQuestions with its hard-wired OpenRouter game master swapped for litellm."""

    def __init__(self, gamemaster: str, completion_kwargs: dict, hardcore: bool = False, max_turns: int = 21):
        # not super().__init__: that builds an OpenRouter client which demands OPENROUTER_API_KEY
        self.hardcore, self.max_turns = hardcore, max_turns
        self.gamemaster = lambda prompt: ask_gamemaster(gamemaster, prompt, completion_kwargs)
        self.gamemaster_options = ["Yes", "No", "I don't know"]
        self.gamemaster_context = None
        self.gamemaster_history: list = []
        # textarena lowercases a guess and reads only letters and spaces inside [...], so words
        # like "TV presenter" or "yo-yo" could never be guessed: lowercase them or leave them out
        self.word_list = {theme: [w.lower() for w in words if re.fullmatch(r"[A-Za-z ]+", w)]
                          for theme, words in self._load_words().items()}
