"""bonefrac.tuning"""
