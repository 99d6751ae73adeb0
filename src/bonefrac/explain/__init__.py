"""bonefrac.explain"""
