#!/bin/sh
# Prints one greeting and exits: the component reaches FINISHED.
echo "Hello world! Greetings from ${1:-a Lichen device}."
