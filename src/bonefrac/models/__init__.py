"""bonefrac.models"""
