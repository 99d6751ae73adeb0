"""bonefrac.data"""
