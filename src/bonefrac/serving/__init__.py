"""bonefrac.serving"""
