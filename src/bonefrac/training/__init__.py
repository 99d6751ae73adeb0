"""bonefrac.training"""
