"""`speechnorm train --config recipes/<name>/conf.yaml [--ckpt_path last.ckpt] [overrides]`.

A LightningCLI over ``EnhancementTask`` and ``EnhancementDataModule``: the recipe YAML names the
model, the data and the Trainer; any key can be overridden on the command line
(``--trainer.max_steps 100``, ``--model.norm batch``). It fits (resuming from ``--ckpt_path``
when given) and then tests on the test and unseen-array splits with the best checkpoint.
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from .data.datamodule import EnhancementDataModule
from .task import EnhancementTask


class TrainCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--ckpt_path", default=None, help="resume training from this checkpoint")
        parser.add_argument("--test", type=bool, default=True, help="test the best checkpoint after fitting")


def run(argv: list[str]) -> int:
    cli = TrainCLI(EnhancementTask, EnhancementDataModule, run=False, args=argv, save_config_kwargs={"overwrite": True},
                   parser_kwargs={"prog": "speechnorm train"})
    trainer = cli.trainer
    trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path)
    if cli.config.test and not trainer.interrupted:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best or None)
    return 0
