"""position"""
