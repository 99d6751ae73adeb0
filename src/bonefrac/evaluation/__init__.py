"""bonefrac.evaluation"""
