"""The one generation engine used by the CLI, Ray Serve and the batch jobs."""

from model.engine.engine import Engine, GenerationResult, PatchOutput, RefineBatch
from model.engine.request import GenerationParams, GenerationRequest

__all__ = ["Engine", "GenerationParams", "GenerationRequest", "GenerationResult", "PatchOutput", "RefineBatch"]
