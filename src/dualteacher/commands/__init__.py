"""One module per command of ``dualteacher``: each owns its argparse sub-parser
(``add_parser``) and its ``run(args)`` (an exit status, or None for 0). Options that several
commands share are declared once in ``_options``. Commands never import one another: what
two of them share lives a floor below (``serving``, ``study``, ``engine``, ``data``).

``COMMANDS`` lists them in the order ``dualteacher --help`` shows them.
"""

from dualteacher.commands import (
    bench,
    check,
    compare,
    configs,
    demo,
    demo_data,
    eval,
    export,
    models,
    predict,
    pseudolabel,
    splits,
    suggest,
    train,
    upgrade_checkpoint,
)

COMMANDS = (
    train,
    eval,
    predict,
    export,
    compare,
    suggest,
    pseudolabel,
    demo_data,
    configs,
    demo,
    check,
    splits,
    upgrade_checkpoint,
    models,
    bench,
)
