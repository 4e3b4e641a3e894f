from lsmia.attack.result import AttackResult

__all__ = ["AttackResult"]
