"""Process-wide settings for the command-line entry points (`srft` and the processes
`srft experiment` starts)."""

from __future__ import annotations


def quiet_libraries() -> None:
    """Library logging for a command-line process: transformers and accelerate errors only, no
    download progress bars, no tokenizer fork warnings."""
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:
        pass
    import logging

    # accelerate's save_state warns on every checkpoint that tied weights (lm_head = embeddings) are stored once
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
