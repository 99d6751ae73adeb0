"""bonefrac.inference"""
