"""Generators: a question and the retrieved passages -> an answer with its citations.

``base`` holds the types and the Protocol, ``registry`` the one table of generator names,
``extractive`` the offline default and ``openai_chat`` any OpenAI-compatible chat API;
``prompting`` renders prompt templates and fits the context into a generator's window.
"""
